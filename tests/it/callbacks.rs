//! The callback endpoint: idempotency, authentication, malformed input.

use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use fanfare::token::{Claims, TokenSigner};
use secrecy::SecretString;
use serde_json::json;

use crate::helpers::*;

async fn app_with_run(pages: usize) -> (TestApp, Arc<RecordingLambda>, Receiver, uuid::Uuid) {
    let (app, lambda, receiver, run, _) = lambda_run("s", pages, "", pages).await;
    // So that a ledger snapshot taken now changes only through the test.
    app.wait_listed(run, Duration::from_secs(20)).await;
    (app, lambda, receiver, run)
}

#[tokio::test]
async fn every_report_sent_twice_concurrently_is_counted_once() {
    let (app, lambda, receiver, run) = app_with_run(200).await;
    let requests = lambda.requests();
    let mut answers = Vec::new();
    let posts = requests.iter().map(|r| {
        let body = if r.page_id.parse::<i64>().unwrap() % 5 == 0 {
            failed(r, false)
        } else {
            succeeded(r)
        };
        let app = &app;
        async move {
            let (a, b) = tokio::join!(
                app.post_report(Some(&r.callback_token), &body),
                app.post_report(Some(&r.callback_token), &body)
            );
            (a, b)
        }
    });
    for (a, b) in futures::future::join_all(posts).await {
        answers.push(a);
        answers.push(b);
    }
    let recorded = answers
        .iter()
        .filter(|(s, b)| *s == 200 && b["status"] == "recorded")
        .count();
    let duplicate = answers
        .iter()
        .filter(|(s, b)| *s == 200 && b["status"] == "duplicate")
        .count();
    assert_eq!((recorded, duplicate), (200, 200), "answers: {answers:?}");
    // Reports that arrived together were written together: every report
    // went through a batch, and fewer batches than reports were written.
    let changes = app.metric("fanfare_record_batch_size_sum", "").await;
    let batches = app.metric("fanfare_record_batch_size_count", "").await;
    assert_eq!(changes, 400.0, "every report went through the recorder");
    assert!(
        batches < changes,
        "{batches} batches for {changes} reports: none held more than one"
    );

    let finished = app.wait_finished(run, Duration::from_secs(10)).await;
    assert_eq!(finished["pages"]["total"], 200);
    assert_eq!(finished["pages"]["succeeded"], 160);
    assert_eq!(finished["pages"]["failed"], 40);
    assert_eq!(finished["outcome"], "partial");
    let deliveries = receiver.wait_for(1, Duration::from_secs(10)).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(receiver.deliveries().len(), 1, "exactly one notification");
    assert_eq!(deliveries[0].json()["pages"]["failed"], 40);
    app.stop().await;
}

#[tokio::test]
async fn a_report_after_the_page_is_terminal_is_a_duplicate_and_changes_nothing() {
    let (app, lambda, _receiver, _run) = app_with_run(2).await;
    let r = &lambda.requests()[0];
    app.report_recorded(r, &succeeded(r)).await;
    let before = app.ledger_snapshot().await;
    // A later, different report of the same page: still a duplicate.
    let (s, b) = app
        .post_report(Some(&r.callback_token), &failed(r, false))
        .await;
    assert_eq!((s, b["status"].as_str()), (200, Some("duplicate")));
    assert_eq!(app.ledger_snapshot().await, before);
    app.stop().await;
}

#[tokio::test]
async fn forged_mismatched_expired_and_missing_tokens_get_401_and_change_nothing() {
    let (app, lambda, _receiver, _run) = app_with_run(2).await;
    let reqs = lambda.requests();
    let (a, b) = (&reqs[0], &reqs[1]);
    let before = app.ledger_snapshot().await;

    // No token at all.
    assert_eq!(app.post_report(None, &succeeded(a)).await.0, 401);
    // Garbage.
    assert_eq!(
        app.post_report(Some("not-a-token"), &succeeded(a)).await.0,
        401
    );
    // Signed with another secret.
    let forger = TokenSigner::new(SecretString::from(
        "another-secret-0123456789abcdefghij".to_string(),
    ));
    let claims = Claims {
        run_id: a.run_id.parse().unwrap(),
        page_id: a.page_id.parse().unwrap(),
        attempt: a.attempt as i32,
        expires: Utc::now() + chrono::Duration::hours(1),
    };
    assert_eq!(
        app.post_report(Some(&forger.sign(&claims)), &succeeded(a))
            .await
            .0,
        401
    );
    // A genuine token for page A with a body about page B.
    assert_eq!(
        app.post_report(Some(&a.callback_token), &succeeded(b))
            .await
            .0,
        401
    );
    // A genuine token for another attempt of the same page.
    let mut other_attempt = succeeded(a);
    other_attempt["attempt"] = json!(a.attempt + 1);
    assert_eq!(
        app.post_report(Some(&a.callback_token), &other_attempt)
            .await
            .0,
        401
    );
    // Expired: the right key, but past its expiry.
    let signer = TokenSigner::new(SecretString::from(CALLBACK_SECRET.to_string()));
    let expired = signer.sign(&Claims {
        expires: Utc::now() - chrono::Duration::seconds(1),
        ..claims
    });
    let (status, body) = app.post_report(Some(&expired), &succeeded(a)).await;
    assert_eq!(status, 401);
    assert!(
        body["error"].as_str().unwrap().contains("expired"),
        "{body}"
    );
    // And the control: the same key, unexpired, is accepted — so the 401s
    // above were for the reasons tested.
    assert_eq!(
        app.ledger_snapshot().await,
        before,
        "no refused report changed the ledger"
    );
    let (status, body) = app
        .post_report(Some(&signer.sign(&claims)), &succeeded(a))
        .await;
    assert_eq!((status, body["status"].as_str()), (200, Some("recorded")));
    app.stop().await;
}

#[tokio::test]
async fn malformed_reports_get_a_4xx_with_a_reason_and_change_nothing() {
    let (app, lambda, _receiver, _run) = app_with_run(1).await;
    let r = &lambda.requests()[0];
    let token = Some(r.callback_token.as_str());
    let before = app.ledger_snapshot().await;

    let (s, b) = app.post_raw(token, b"{not json".to_vec()).await;
    assert_eq!(s, 400);
    assert!(
        b["error"].as_str().unwrap().contains("not valid JSON"),
        "{b}"
    );

    let mut missing = succeeded(r);
    missing.as_object_mut().unwrap().remove("outcome");
    let (s, b) = app.post_report(token, &missing).await;
    assert_eq!(s, 422, "{b}");

    let mut wrong_version = succeeded(r);
    wrong_version["version"] = json!(2);
    let (s, b) = app.post_report(token, &wrong_version).await;
    assert_eq!(s, 422);
    assert!(b["error"].as_str().unwrap().contains("version 2"), "{b}");

    let mut bad_hash = succeeded(r);
    bad_hash["content_sha256"] = json!("xyz");
    let (s, b) = app.post_report(token, &bad_hash).await;
    assert_eq!(s, 422);
    assert!(
        b["error"].as_str().unwrap().contains("content_sha256"),
        "{b}"
    );

    let mut huge = succeeded(r);
    huge["title"] = json!("x".repeat(300 * 1024));
    assert_eq!(app.post_report(token, &huge).await.0, 413);

    assert_eq!(app.ledger_snapshot().await, before);
    app.stop().await;
}

#[tokio::test]
async fn concurrent_last_reports_finish_the_run_exactly_once() {
    let (app, lambda, receiver) = notifying_app("race", 2, "").await;
    // Many runs of two pages each; both reports of each run race.
    let trials = 25;
    let mut runs = Vec::new();
    for _ in 0..trials {
        runs.push(app.trigger("race").await);
    }
    let requests = lambda.wait_for(trials * 2).await;
    let bodies: Vec<_> = requests.iter().map(succeeded).collect();
    let posts = requests
        .iter()
        .zip(&bodies)
        .map(|(r, body)| app.post_report(Some(&r.callback_token), body));
    let answers = futures::future::join_all(posts).await;
    assert!(
        answers
            .iter()
            .all(|(s, b)| *s == 200 && b["status"] == "recorded"),
        "{answers:?}"
    );
    for run in &runs {
        let finished = app.wait_finished(*run, Duration::from_secs(10)).await;
        assert_eq!(finished["outcome"], "succeeded");
    }
    let per_run: Vec<(i64,)> = sqlx::query_as(
        "select count(n.id) from runs r left join notifications n on n.run_id = r.id group by r.id",
    )
    .fetch_all(&app.pool)
    .await
    .unwrap();
    assert_eq!(per_run.len(), trials);
    assert!(
        per_run.iter().all(|(n,)| *n == 1),
        "one outbox row per run: {per_run:?}"
    );
    receiver.wait_for(trials, Duration::from_secs(20)).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut ids: Vec<String> = receiver
        .deliveries()
        .iter()
        .map(|d| d.header("webhook-id").to_string())
        .collect();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), trials, "one delivery per run");
    assert_eq!(receiver.deliveries().len(), trials);
    app.stop().await;
}

#[tokio::test]
async fn a_run_left_finishing_by_a_daemon_that_died_is_finished_by_the_sweeper_once() {
    let (app, lambda, receiver, run) = app_with_run(2).await;
    let requests = lambda.requests();
    app.report_recorded(&requests[0], &succeeded(&requests[0]))
        .await;
    // The last page is recorded by a daemon that dies before finishing the
    // run: the statement it runs commits on its own, and nothing follows.
    let last = &requests[1];
    let recorded = fanfare::ledger::record_pages(
        &app.pool,
        &[fanfare::ledger::PageWrite {
            run_id: run,
            page_id: last.page_id.parse().unwrap(),
            attempt: last.attempt as i32,
            change: fanfare::ledger::PageChange::Terminal {
                status: fanfare::ledger::PageStatus::Succeeded,
                result: Some(succeeded(last)["result"].clone()),
                error: None,
                found: None,
            },
        }],
    )
    .await
    .unwrap();
    assert_eq!(
        recorded.iter().map(|r| r.run_status).collect::<Vec<_>>(),
        [Some(fanfare::ledger::RunStatus::Finishing)]
    );
    let (_, shown) = app.get(&format!("/v1/runs/{run}")).await;
    assert_eq!(shown["status"], "finishing");
    assert_eq!(shown["pages"]["open"], 0);
    // The crawler's retry of that report is a duplicate; a cancel is refused.
    let (s, b) = app
        .post_report(Some(&last.callback_token), &succeeded(last))
        .await;
    assert_eq!((s, b["status"].as_str()), (200, Some("duplicate")));
    let (status, cancel) = app.post(&format!("/v1/runs/{run}/cancel")).await;
    assert_eq!(status, 409, "{cancel}");
    // The crash was a while ago: past the grace, the sweeper finishes it.
    sqlx::query("update runs set updated_at = now() - interval '1 minute' where id = $1")
        .bind(run)
        .execute(&app.pool)
        .await
        .unwrap();
    let finished = app.wait_finished(run, Duration::from_secs(10)).await;
    assert_eq!(finished["outcome"], "succeeded");
    assert_eq!(finished["pages"]["succeeded"], 2);
    let deliveries = receiver.wait_for(1, Duration::from_secs(10)).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(receiver.deliveries().len(), 1, "exactly one notification");
    assert_eq!(deliveries[0].json()["outcome"], "succeeded");
    app.stop().await;
}
