//! What the tests against real Lambda APIs need besides the test kit
//! (`testkit/`, which gives them a fresh database per test, the one
//! `TestApp`, a webhook receiver): AWS credentials for local Lambda APIs, a
//! `[lambda]` section, a check of task tokens.

use fanfare_crawler::contract::CrawlRequest;

pub use fanfare_testkit::{Receiver, TestApp, CALLBACK_SECRET};

/// The region of every test's Lambda client.
pub const REGION: &str = "us-east-1";

/// Credentials for the AWS default chain, which `AwsLambda::from_settings`
/// uses: local Lambda APIs accept any. Set before the application (and its
/// SDK client) is built; nextest runs each test in its own process, and the
/// tests use a current-thread runtime, so nothing reads the environment
/// concurrently.
pub fn use_test_aws_credentials() {
    std::env::set_var("AWS_ACCESS_KEY_ID", "test");
    std::env::set_var("AWS_SECRET_ACCESS_KEY", "test");
    std::env::remove_var("AWS_SESSION_TOKEN");
    std::env::remove_var("AWS_PROFILE");
    // No instance metadata lookups on a machine that is not EC2.
    std::env::set_var("AWS_EC2_METADATA_DISABLED", "true");
}

/// A `[lambda]` section pointing at a local Lambda API.
pub fn lambda_section(endpoint: &str, invoke_timeout: &str) -> String {
    format!(
        "[lambda]\nregion = \"{REGION}\"\nendpoint_url = \"{endpoint}\"\ninvoke_timeout = \"{invoke_timeout}\"\n"
    )
}

/// Starts the application on a fresh database with its Lambda client
/// built from `lambda` (a `[lambda]` section) by the application itself.
pub async fn spawn_app(lambda: &str, schedules: &str) -> TestApp {
    TestApp::builder()
        .toml(lambda)
        .toml(schedules)
        .spawn()
        .await
}

/// Checks that `token` is a valid task token for exactly this run, page
/// and attempt, using fanfare's verifier with the test secret.
pub fn assert_valid_token(request: &CrawlRequest) {
    let signer = fanfare::token::TokenSigner::new(secrecy::SecretString::from(CALLBACK_SECRET));
    let claims = signer
        .verify(&request.callback_token, chrono::Utc::now())
        .unwrap_or_else(|e| {
            panic!(
                "page {}: the callback token does not verify: {e:?}",
                request.page_id
            )
        });
    assert_eq!(claims.run_id.to_string(), request.run_id, "token's run");
    assert_eq!(claims.page_id.to_string(), request.page_id, "token's page");
    assert_eq!(claims.attempt as u32, request.attempt, "token's attempt");
    assert!(
        claims.expires > request.deadline,
        "the token outlives the attempt's deadline"
    );
}
