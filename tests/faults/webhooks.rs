//! A webhook receiver that answers 503 for the first 5 s after its first
//! delivery, then recovers: each run's notification is retried with backoff
//! under the same webhook-id until it is accepted, once.

use std::time::Duration;

use crate::helpers::*;

const DOWN_FOR: Duration = Duration::from_secs(5);
const RUNS: usize = 2;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_webhook_receiver_down_for_five_seconds_gets_each_notification_accepted_once_under_one_webhook_id(
) {
    let receiver = Receiver::with_policy(Box::new(
        |_, since_first| {
            if since_first < DOWN_FOR {
                503
            } else {
                200
            }
        },
    ))
    .await;
    let schedule = schedule("empty").webhook(&receiver.url).to_string();
    let app = TestApp::spawn(&schedule, None).await;
    let mut runs = Vec::new();
    for _ in 0..RUNS {
        runs.push(app.trigger("empty").await);
    }
    let mut figures = Vec::new();
    let mut checks = Vec::new();
    for &run in &runs {
        app.wait_finished(run, Duration::from_secs(10)).await;
        receiver.wait_delivered(run, Duration::from_secs(40)).await;
        // The delivery is recorded just after the receiver answers.
        let state = eventually("the delivery is recorded", secs(5), || async {
            let (_, body) = app.get(&format!("/v1/runs/{run}")).await;
            let state = body["notifications"][0].clone();
            holds(state["status"] == "delivered", &state).map(|()| state)
        })
        .await;
        checks.push((run, state));
    }
    // Room for a duplicate delivery to show up.
    tokio::time::sleep(Duration::from_millis(500)).await;
    for (run, state) in &checks {
        let hits = receiver.hits_for(*run);
        let failures = hits.iter().filter(|h| !h.accepted()).count();
        let accepted = hits.iter().filter(|h| h.accepted()).count();
        let ids = by_webhook_id(&hits);
        let first = hits.first().map(|h| h.at).unwrap();
        let delivered_after = hits
            .iter()
            .find(|h| h.accepted())
            .map(|h| h.at - first)
            .unwrap_or_default();
        figures.push((
            *run,
            failures,
            accepted,
            ids,
            delivered_after,
            state.clone(),
        ));
    }
    for (run, failures, accepted, ids, after, state) in &figures {
        println!(
            "FIGURE webhooks run={run} down_s={} attempts={} failures={failures} accepted={accepted} webhook_ids={} api_status={} api_attempts={} time_to_delivery_s={:.1}",
            DOWN_FOR.as_secs(),
            failures + accepted,
            ids.len(),
            state["status"],
            state["attempts"],
            after.as_secs_f64(),
        );
    }

    for (run, failures, accepted, ids, _, state) in &figures {
        assert!(
            *failures > 0,
            "run {run}: the receiver failed deliveries first"
        );
        assert_eq!(*accepted, 1, "run {run}: exactly one accepted delivery");
        assert_eq!(ids.len(), 1, "run {run}: one webhook-id over all attempts");
        assert!(
            ids.contains_key(&format!("msg_{}_0", run.simple())),
            "run {run}: {ids:?}"
        );
        assert!(
            ids.values().flatten().all(|h| h.signature_ok),
            "run {run}: every attempt signed"
        );
        assert_eq!(state["status"], "delivered", "run {run}: {state}");
        assert_eq!(
            state["attempts"].as_u64(),
            Some(*failures as u64 + 1),
            "run {run}: attempts = failures + 1: {state}"
        );
        assert_eq!(state["webhook_id"], format!("msg_{}_0", run.simple()));
    }
    app.stop().await;
}
