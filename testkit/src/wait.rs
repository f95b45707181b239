//! One way to wait for a condition: [`eventually`], and
//! [`eventually_notified`] for a condition that says when it changed.

use std::fmt::Display;
use std::future::Future;
use std::time::Duration;

use tokio::sync::Notify;

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
            gave_up(what, within, reason);
        }
        tokio::time::sleep(POLL).await;
    }
}

/// [`eventually`] for a condition that changes only when `changed` is
/// notified (`notify_waiters`): `look` runs now and after every
/// notification, and once more when `within` has passed, before the test
/// fails with `what` and the reason the last look gave.
pub async fn eventually_notified<T, E: Display>(
    what: &str,
    within: Duration,
    changed: &Notify,
    mut look: impl FnMut() -> Result<T, E>,
) -> T {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        let notified = changed.notified();
        if let Ok(value) = look() {
            return value;
        }
        if tokio::time::timeout_at(deadline, notified).await.is_err() {
            match look() {
                Ok(value) => return value,
                Err(reason) => gave_up(what, within, reason),
            }
        }
    }
}

fn gave_up(what: &str, within: Duration, reason: impl Display) -> ! {
    panic!("{what}: gave up after {within:?}; the last look saw: {reason}")
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

    #[tokio::test]
    async fn a_notified_look_runs_again_on_each_notification() {
        use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
        let changed = std::sync::Arc::new(Notify::new());
        let count = std::sync::Arc::new(AtomicUsize::new(0));
        let (c, n) = (changed.clone(), count.clone());
        tokio::spawn(async move {
            for _ in 0..3 {
                tokio::time::sleep(Duration::from_millis(10)).await;
                n.fetch_add(1, SeqCst);
                c.notify_waiters();
            }
        });
        let seen = eventually_notified("three changes", secs(5), &changed, || {
            let n = count.load(SeqCst);
            holds(n >= 3, format!("{n} changes")).map(|()| n)
        });
        assert_eq!(seen.await, 3);
    }

    #[tokio::test]
    #[should_panic(expected = "quiet: gave up after 50ms; the last look saw: nothing yet")]
    async fn a_notified_wait_gives_up_naming_what_it_saw_last() {
        let quiet = Duration::from_millis(50);
        eventually_notified("quiet", quiet, &Notify::new(), || {
            holds(false, "nothing yet")
        })
        .await;
    }
}
