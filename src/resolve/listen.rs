//! Invalidation: a listener on the registry's change channel that drops the
//! resolver's cached answers when any process changes tenants or domains.

use super::*;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;
#[cfg(feature = "sync")]
use std::time::Instant;

#[cfg(feature = "sync")]
use crate::registry;
use crate::{Error, Result};

impl Resolver {
    /// Starts listening on [`registry::CHANGE_CHANNEL`](crate::registry::CHANGE_CHANNEL) and drops every
    /// cached answer (in this process) when any process changes tenants or
    /// domains; stops when the returned guard is dropped. If its connection
    /// fails, it reconnects and invalidates, since it may have missed a change.
    ///
    /// With a blocking pool this is a thread on a libpq connection, and fails
    /// if that cannot connect. With an async pool it is a task on the current
    /// tokio runtime (this fails outside one) on a connection of its own,
    /// which connects in the background; [`listen_async`](Self::listen_async)
    /// connects first and reports a failure.
    pub fn listen(&self) -> Result<ListenerGuard> {
        match &self.inner.config.pool {
            #[cfg(feature = "sync")]
            LookupPool::Sync(pool) => self.listen_thread(
                self.inner
                    .config
                    .listen_url
                    .clone()
                    .unwrap_or_else(|| pool.database_url().to_owned()),
            ),
            #[cfg(any(feature = "deadpool", feature = "bb8"))]
            LookupPool::Async(pool) => {
                let runtime = tokio::runtime::Handle::try_current().map_err(|_| Error::Config {
                    reason: "Resolver::listen on an async pool needs a tokio runtime".into(),
                })?;
                Ok(self.listen_task(&runtime, self.async_listen_url(pool), None))
            }
        }
    }

    /// [`listen`](Self::listen) from async code: with an async pool, connects
    /// the listener first (and fails if it cannot); with a blocking pool, the
    /// same as `listen` on a blocking thread.
    #[cfg(feature = "async")]
    pub async fn listen_async(&self) -> Result<ListenerGuard> {
        match &self.inner.config.pool {
            #[cfg(feature = "sync")]
            LookupPool::Sync(_) => {
                let me = self.clone();
                tokio::task::spawn_blocking(move || me.listen())
                    .await
                    .map_err(|e| Error::Config {
                        reason: format!("could not start the listener: {e}"),
                    })?
            }
            #[cfg(any(feature = "deadpool", feature = "bb8"))]
            LookupPool::Async(pool) => {
                let url = self.async_listen_url(pool);
                let first = listener_async::connect(&url).await?;
                Ok(self.listen_task(&tokio::runtime::Handle::current(), url, Some(first)))
            }
        }
    }

    #[cfg(any(feature = "deadpool", feature = "bb8"))]
    fn async_listen_url(&self, pool: &crate::AsyncTenantPool) -> String {
        self.inner
            .config
            .listen_url
            .clone()
            .unwrap_or_else(|| pool.database_url().to_owned())
    }

    #[cfg(any(feature = "deadpool", feature = "bb8"))]
    fn listen_task(
        &self,
        runtime: &tokio::runtime::Handle,
        url: String,
        first: Option<listener_async::Listening>,
    ) -> ListenerGuard {
        let stop = Arc::new(AtomicBool::new(false));
        let weak: Weak<Inner> = Arc::downgrade(&self.inner);
        let flag = Arc::clone(&stop);
        let task = runtime.spawn(listener_async::run(url, first, move || {
            !flag.load(Ordering::Relaxed) && weak.strong_count() > 0
        }));
        ListenerGuard {
            stop,
            running: Running::Task(task.abort_handle()),
        }
    }

    #[cfg(feature = "sync")]
    fn listen_thread(&self, url: String) -> Result<ListenerGuard> {
        use diesel::connection::SimpleConnection;
        let mut conn = connect_listener(&url)?;
        let stop = Arc::new(AtomicBool::new(false));
        let weak: Weak<Inner> = Arc::downgrade(&self.inner);
        let flag = Arc::clone(&stop);
        let handle = std::thread::Builder::new()
            .name("diesel-tenancy-listen".into())
            .spawn(move || {
                let mut pinged = Instant::now();
                while !flag.load(Ordering::Relaxed) && weak.strong_count() > 0 {
                    let mut heard = false;
                    let mut broken = false;
                    for n in conn.notifications_iter() {
                        match n {
                            Ok(_) => heard = true,
                            Err(_) => {
                                broken = true;
                                break;
                            }
                        }
                    }
                    // A connection that died without a word (a half-open TCP
                    // connection) only shows when something is sent on it.
                    if !broken && pinged.elapsed() >= LISTENER_KEEPALIVE {
                        pinged = Instant::now();
                        broken = conn.batch_execute("SELECT 1").is_err();
                    }
                    if broken {
                        registry::bump_generation();
                        loop {
                            if flag.load(Ordering::Relaxed) {
                                return;
                            }
                            std::thread::sleep(Duration::from_millis(500));
                            if let Ok(c) = connect_listener(&url) {
                                conn = c;
                                break;
                            }
                        }
                        registry::bump_generation();
                    } else if heard {
                        registry::bump_generation();
                    }
                    std::thread::sleep(Duration::from_millis(20));
                }
                let _ = conn.batch_execute("UNLISTEN *");
            })
            .map_err(|e| Error::Config {
                reason: format!("could not start the listener thread: {e}"),
            })?;
        Ok(ListenerGuard {
            stop,
            running: Running::Thread(Some(handle)),
        })
    }
}

/// How often the registry listener checks that its connection still works.
const LISTENER_KEEPALIVE: Duration = Duration::from_secs(10);

/// The `application_name` of the registry listener's connection, by which it
/// can be found in `pg_stat_activity`.
pub const LISTENER_APPLICATION_NAME: &str = "diesel-tenancy-listener";

/// `url` with the listener's `application_name` added (a URL or a libpq
/// key=value string).
fn listener_url(url: &str) -> String {
    if url.contains("://") {
        let sep = if url.contains('?') { '&' } else { '?' };
        format!("{url}{sep}application_name={LISTENER_APPLICATION_NAME}")
    } else {
        format!("{url} application_name={LISTENER_APPLICATION_NAME}")
    }
}

#[cfg(feature = "sync")]
fn connect_listener(url: &str) -> Result<diesel::PgConnection> {
    use diesel::Connection;
    use diesel::connection::SimpleConnection;
    let mut conn = diesel::PgConnection::establish(&listener_url(url)).map_err(Error::Connect)?;
    conn.batch_execute(&format!("LISTEN {}", registry::CHANGE_CHANNEL))
        .map_err(Error::db("listen for registry changes"))?;
    Ok(conn)
}

/// The registry listener on an async connection of its own (tokio-postgres,
/// so no libpq), for resolvers on an async pool.
#[cfg(any(feature = "deadpool", feature = "bb8"))]
mod listener_async {
    use std::time::Duration;

    use futures_util::StreamExt;
    use tokio::sync::mpsc;

    use crate::{Error, Result, registry};

    /// A connected listener: notifications arrive on the channel; it closes
    /// when the connection ends.
    pub(super) struct Listening {
        client: tokio_postgres::Client,
        heard: mpsc::UnboundedReceiver<()>,
    }

    /// Connects and sends `LISTEN`.
    pub(super) async fn connect(url: &str) -> Result<Listening> {
        let (client, mut connection) =
            tokio_postgres::connect(&super::listener_url(url), tokio_postgres::NoTls)
                .await
                .map_err(|e| Error::Config {
                    reason: format!("the registry listener could not connect: {e}"),
                })?;
        let (tx, heard) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            let mut messages = futures_util::stream::poll_fn(|cx| connection.poll_message(cx));
            while let Some(Ok(message)) = messages.next().await {
                if matches!(message, tokio_postgres::AsyncMessage::Notification(_))
                    && tx.send(()).is_err()
                {
                    return;
                }
            }
        });
        client
            .batch_execute(&format!("LISTEN {}", registry::CHANGE_CHANNEL))
            .await
            .map_err(|e| Error::Config {
                reason: format!("the registry listener could not LISTEN: {e}"),
            })?;
        Ok(Listening { client, heard })
    }

    /// Invalidates on every notification while `running()`, reconnecting
    /// (and invalidating, since changes may have been missed) when the
    /// connection ends.
    pub(super) async fn run(url: String, first: Option<Listening>, running: impl Fn() -> bool) {
        let mut current = first;
        while running() {
            let mut listening = match current.take() {
                Some(l) => l,
                None => match connect(&url).await {
                    Ok(l) => {
                        registry::bump_generation();
                        l
                    }
                    Err(_) => {
                        tokio::time::sleep(Duration::from_millis(500)).await;
                        continue;
                    }
                },
            };
            let mut pinged = tokio::time::Instant::now();
            loop {
                match tokio::time::timeout(Duration::from_millis(500), listening.heard.recv()).await
                {
                    Ok(Some(())) => registry::bump_generation(),
                    Ok(None) => {
                        registry::bump_generation();
                        break;
                    }
                    Err(_) if !running() => return,
                    Err(_) => {}
                }
                // A connection that died without a word only shows when
                // something is sent on it.
                if pinged.elapsed() >= super::LISTENER_KEEPALIVE {
                    pinged = tokio::time::Instant::now();
                    let ping = listening.client.simple_query("SELECT 1");
                    if !matches!(
                        tokio::time::timeout(Duration::from_secs(5), ping).await,
                        Ok(Ok(_))
                    ) {
                        registry::bump_generation();
                        break;
                    }
                }
            }
        }
    }
}

/// Keeps [`Resolver::listen`]'s listener running; dropping it stops it.
#[derive(Debug)]
pub struct ListenerGuard {
    stop: Arc<AtomicBool>,
    running: Running,
}

#[derive(Debug)]
enum Running {
    #[cfg(feature = "sync")]
    Thread(Option<std::thread::JoinHandle<()>>),
    #[cfg(any(feature = "deadpool", feature = "bb8"))]
    Task(tokio::task::AbortHandle),
}

impl Drop for ListenerGuard {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        match &mut self.running {
            #[cfg(feature = "sync")]
            Running::Thread(handle) => {
                if let Some(handle) = handle.take() {
                    let _ = handle.join();
                }
            }
            #[cfg(any(feature = "deadpool", feature = "bb8"))]
            Running::Task(task) => task.abort(),
        }
    }
}
