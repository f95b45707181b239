//! What the deployment (deploy/) relies on: the whole configuration from one
//! environment variable (a Secrets Manager secret), and fanfare running as
//! its own database role created by deploy/db-role.sql.

use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use sqlx::{Connection, Executor, PgConnection};

use crate::helpers::*;

fn fanfare() -> Command {
    Command::new(env!("CARGO_BIN_EXE_fanfare"))
}

#[test]
fn check_config_reads_the_whole_configuration_from_fanfare_config_toml_with_env_overrides_on_top() {
    // The file named by --config does not exist: the variable takes its place.
    let missing =
        std::env::temp_dir().join(format!("fanfare-absent-{}.toml", uuid::Uuid::new_v4()));
    let webhook_secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
    let text = format!(
        r#"
[server]
public_url = "https://fanfare.example.com"
[database]
url = "postgres://x@127.0.0.1/db"
[security]
callback_secret = "{CALLBACK_SECRET}"

[[schedules]]
name = "nightly"
cron = "0 0 3 * * *"
function = "fanfare-crawler"
pages = {{ urls = ["https://a.example/"] }}

[[schedules.notify]]
webhook = {{ url = "https://hooks.example.com/fanfare", secret = "{webhook_secret}" }}
"#
    );

    // Without the admin token (in no file, no variable) it is invalid, and
    // says where the configuration came from.
    let out = fanfare()
        .args(["check-config", "--config"])
        .arg(&missing)
        .env("FANFARE_CONFIG_TOML", &text)
        .env_remove("FANFARE__SECURITY__ADMIN_TOKEN")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.starts_with("FANFARE_CONFIG_TOML: "), "{stderr}");
    assert!(
        stderr.contains("security.admin_token: is required"),
        "{stderr}"
    );
    assert!(!stderr.contains(webhook_secret), "{stderr}");
    assert!(!stderr.contains(CALLBACK_SECRET), "{stderr}");

    // An environment override applies on top of the variable's text.
    let out = fanfare()
        .args(["check-config", "--config"])
        .arg(&missing)
        .env("FANFARE_CONFIG_TOML", &text)
        .env("FANFARE__SECURITY__ADMIN_TOKEN", ADMIN_TOKEN)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(stdout.trim(), "FANFARE_CONFIG_TOML: valid (1 schedules)");

    // Without the variable, the missing file is the problem again.
    let out = fanfare()
        .args(["check-config", "--config"])
        .arg(&missing)
        .env_remove("FANFARE_CONFIG_TOML")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("does not exist"));
}

/// Applies deploy/db-role.sql with psql, as the test server's superuser, in
/// the database `url` names.
fn apply_db_role_sql(url: &str, role: &str, password: &str) {
    let sql = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/db-role.sql");
    let out = Command::new("psql")
        .arg(url)
        .args(["-X", "-q", "-v", "ON_ERROR_STOP=1", "-v"])
        .arg(format!("role={role}"))
        .arg("-v")
        .arg(format!("password={password}"))
        .arg("-f")
        .arg(&sql)
        .output()
        .expect("psql runs (the PostgreSQL client is needed for this test)");
    assert!(
        out.status.success(),
        "deploy/db-role.sql failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test]
async fn the_daemon_migrates_and_completes_a_run_as_the_least_privileged_role_db_role_sql_creates()
{
    let db = fresh_database().await;
    let role = format!("fanfare_app_{}", uuid::Uuid::new_v4().simple());
    let password = "app-password-0123456789";
    apply_db_role_sql(&db, &role, password);
    // Twice: a second run only sets the password again.
    apply_db_role_sql(&db, &role, password);

    let mut role_url = url::Url::parse(&db).unwrap();
    role_url.set_username(&role).unwrap();
    role_url.set_password(Some(password)).unwrap();
    let role_url = role_url.to_string();

    let lambda = Arc::new(RecordingLambda::default());
    let schedule = fanfare_testkit::lambda_schedule_block("role-run", 2, "", "");
    let app = TestApp::spawn_on(&role_url, &schedule, Some(lambda.clone())).await;
    let run = app.trigger("role-run").await;
    for r in lambda.wait_for(2).await {
        let (status, body) = app
            .post_report(Some(&r.callback_token), &succeeded(&r))
            .await;
        assert_eq!(status, 200, "{body}");
    }
    let finished = app.wait_finished(run, Duration::from_secs(30)).await;
    assert_eq!(finished["outcome"], "succeeded", "{finished:#}");
    app.stop().await;

    let mut admin = PgConnection::connect(&db).await.unwrap();
    // The role holds no cluster-wide power.
    let (superuser, createdb, createrole, replication, bypassrls): (bool, bool, bool, bool, bool) =
        sqlx::query_as(
            "select rolsuper, rolcreatedb, rolcreaterole, rolreplication, rolbypassrls
               from pg_roles where rolname = $1",
        )
        .bind(&role)
        .fetch_one(&mut admin)
        .await
        .unwrap();
    assert!(!(superuser || createdb || createrole || replication || bypassrls));
    // The migrations' tables are in its schema and belong to it.
    let tables: Vec<(String, String, String)> = sqlx::query_as(
        "select schemaname::text, tablename::text, tableowner::text from pg_tables
          where schemaname not in ('pg_catalog', 'information_schema') order by 2",
    )
    .fetch_all(&mut admin)
    .await
    .unwrap();
    assert!(
        tables.iter().any(|(_, t, _)| t == "runs")
            && tables.iter().any(|(_, t, _)| t == "_sqlx_migrations"),
        "{tables:?}"
    );
    for (schema, table, owner) in &tables {
        assert_eq!(
            (schema.as_str(), owner.as_str()),
            ("fanfare", role.as_str()),
            "{table}"
        );
    }
    // It may not create anything outside its schema.
    let mut as_role = PgConnection::connect(&role_url).await.unwrap();
    let refused = as_role
        .execute("create table public.elsewhere (id int)")
        .await
        .expect_err("no create on public");
    assert!(
        refused.to_string().contains("permission denied"),
        "{refused}"
    );
    as_role.close().await.ok();

    // Roles are cluster-wide: drop the test database, then the role.
    admin.close().await.ok();
    let mut server = PgConnection::connect(&fanfare_testkit::admin_database_url())
        .await
        .unwrap();
    let name = url::Url::parse(&db)
        .unwrap()
        .path()
        .trim_start_matches('/')
        .to_string();
    server
        .execute(format!(r#"drop database "{name}" with (force)"#).as_str())
        .await
        .unwrap();
    server
        .execute(format!(r#"drop role "{role}""#).as_str())
        .await
        .unwrap();
}
