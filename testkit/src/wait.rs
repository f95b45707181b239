//! One way to wait for a condition: [`eventually`].

use std::fmt::Display;
use std::future::Future;
use std::time::Duration;

/// How often [`eventually`] looks again.
pub const POLL: Duration = Duration::from_millis(20);

/// Looks at a condition every [`POLL`] until `look` answers `Ok`, and
/// returns that value. `look` answers `Err(reason)` while the condition does
/// not hold yet; when `within` has passed, the test fails with `what` and
/// the reason the last look gave, so the failure says what was seen, not
/// only that time ran out.
///
/// ```ignore
/// let run = eventually("the run finishes", secs(30), || async {
///     let (_, run) = app.get(&path).await;
///     if run["status"] == "finished" { Ok(run) } else { Err(format!("status {}", run["status"])) }
/// })
/// .await;
/// ```
pub async fn eventually<T, E, F, Fut>(what: &str, within: Duration, mut look: F) -> T
where
    E: Display,
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, E>>,
{
    let deadline = tokio::time::Instant::now() + within;
    loop {
        let reason = match look().await {
            Ok(value) => return value,
            Err(reason) => reason,
        };
        if tokio::time::Instant::now() >= deadline {
            panic!("{what}: gave up after {within:?}; the last look saw: {reason}");
        }
        tokio::time::sleep(POLL).await;
    }
}

/// `Ok(())` when `done`, else `Err` with `seen`: the usual shape of a look
/// for [`eventually`] that returns nothing.
pub fn holds(done: bool, seen: impl Display) -> Result<(), String> {
    if done {
        Ok(())
    } else {
        Err(seen.to_string())
    }
}

/// `n` seconds.
pub const fn secs(n: u64) -> Duration {
    Duration::from_secs(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn returns_the_first_value_that_holds() {
        let mut looks = 0;
        let got = eventually("three looks", secs(5), || {
            looks += 1;
            let n = looks;
            async move {
                if n >= 3 {
                    Ok(n)
                } else {
                    Err(format!("look {n}"))
                }
            }
        })
        .await;
        assert_eq!(got, 3);
    }

    #[tokio::test]
    #[should_panic(expected = "never: gave up after 50ms; the last look saw: still 7")]
    async fn gives_up_naming_what_it_waited_for_and_what_it_saw() {
        eventually("never", Duration::from_millis(50), || async {
            Err::<(), _>("still 7")
        })
        .await;
    }
}
