//! A loopback TCP proxy to a test database that can be cut (open
//! connections closed, new ones dropped at once) and restored: a database
//! outage without stopping the shared Postgres.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Notify;

/// A proxy in front of one database.
pub struct PgProxy {
    /// The database URL through the proxy: give this to the daemon.
    pub url: String,
    up: Arc<AtomicBool>,
    cut: Arc<Notify>,
}

impl PgProxy {
    /// Starts a proxy to the server of `database_url`, passing connections
    /// through until [`PgProxy::cut`].
    pub async fn start(database_url: &str) -> Self {
        let mut url = url::Url::parse(database_url).expect("a database URL");
        let upstream = format!(
            "{}:{}",
            url.host_str().expect("the database URL has a host"),
            url.port().unwrap_or(5432)
        );
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        url.set_port(Some(listener.local_addr().unwrap().port()))
            .unwrap();
        let up = Arc::new(AtomicBool::new(true));
        let cut = Arc::new(Notify::new());
        let (u, c) = (up.clone(), cut.clone());
        tokio::spawn(async move {
            loop {
                let Ok((mut client, _)) = listener.accept().await else {
                    return;
                };
                if !u.load(Ordering::SeqCst) {
                    continue; // dropped at once: the connection fails
                }
                let (upstream, cut) = (upstream.clone(), c.clone());
                tokio::spawn(async move {
                    let Ok(mut server) = TcpStream::connect(&upstream).await else {
                        return;
                    };
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut client, &mut server) => {}
                        _ = cut.notified() => {}
                    }
                });
            }
        });
        Self {
            url: url.to_string(),
            up,
            cut,
        }
    }

    /// Closes every open connection and refuses new ones.
    pub fn cut(&self) {
        self.up.store(false, Ordering::SeqCst);
        self.cut.notify_waiters();
    }

    /// Passes new connections through again.
    pub fn restore(&self) {
        self.up.store(true, Ordering::SeqCst);
    }
}
