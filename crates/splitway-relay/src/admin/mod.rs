//! The admin API and the metrics listener: small HTTP/1.1 servers.
//!
//! - [`http`]: reading a request, writing a response.
//! - [`api`]: the endpoints, the token check, typed errors mapped to
//!   statuses.
//!
//! The admin API listens on `[admin] listen` (a local address or a Unix
//! socket; elsewhere only with a token); `[metrics] listen` serves
//! `/metrics` and `/health` and nothing else, for scrapers on other hosts.
//! Both use one listener type and one accept loop. Endpoints are listed in
//! `docs/operations.md`; a bad request gets a 4xx with
//! `{"error": ..., "field": ...}` and changes nothing (see
//! [`crate::control`]).

pub mod api;
pub mod http;

use std::path::PathBuf;
use std::sync::Arc;

use splitway_core::config::{parse_admin_listen, Admin, AdminListen, AdminToken};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, UnixListener};
use tokio::sync::watch;

pub use api::{Api, ApiError, Role};

/// Why a listener of the admin API could not start.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("admin.listen: bad address {0}")]
    Address(String),
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: String,
        #[source]
        source: std::io::Error,
    },
    #[error("admin.token_file {path}: {reason}")]
    TokenFile { path: String, reason: String },
}

/// The token writes need: `[admin] token`, or the first line of
/// `token_file` (read now, at start).
pub fn token(a: &Admin) -> Result<Option<AdminToken>, ServeError> {
    if let Some(t) = &a.token {
        return Ok(Some(t.clone()));
    }
    let Some(path) = &a.token_file else {
        return Ok(None);
    };
    let err = |reason: String| ServeError::TokenFile {
        path: path.display().to_string(),
        reason,
    };
    let text = std::fs::read_to_string(path).map_err(|e| err(e.to_string()))?;
    let line = text.lines().next().unwrap_or("").trim();
    if line.is_empty() || line.chars().any(char::is_whitespace) {
        return Err(err(
            "the first line must be the token, without spaces".into()
        ));
    }
    Ok(Some(AdminToken::new(line)))
}

/// A bound listener of either kind.
enum Listener {
    Tcp(TcpListener),
    Unix(UnixListener, PathBuf),
}

impl Listener {
    async fn bind(listen: &AdminListen) -> Result<Listener, ServeError> {
        let bind_err = |source| ServeError::Bind {
            addr: format!("{listen:?}"),
            source,
        };
        match listen {
            AdminListen::Tcp(addr) => Ok(Listener::Tcp(
                TcpListener::bind(addr).await.map_err(bind_err)?,
            )),
            AdminListen::Unix(path) => {
                let _ = std::fs::remove_file(path);
                let l = UnixListener::bind(path).map_err(bind_err)?;
                // The API can change routes and drain the relay: owner
                // only, whatever the umask.
                use std::os::unix::fs::PermissionsExt;
                std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
                    .map_err(bind_err)?;
                Ok(Listener::Unix(l, path.clone()))
            }
        }
    }

    /// Accept one connection and serve it on its own task.
    async fn accept_one(&self, api: &Arc<Api>, role: Role) -> std::io::Result<()> {
        match self {
            Listener::Tcp(l) => {
                let (s, _) = l.accept().await?;
                tokio::spawn(serve_one(s, api.clone(), role));
            }
            Listener::Unix(l, _) => {
                let (s, _) = l.accept().await?;
                tokio::spawn(serve_one(s, api.clone(), role));
            }
        }
        Ok(())
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        if let Listener::Unix(_, path) = self {
            let _ = std::fs::remove_file(path);
        }
    }
}

async fn serve_one<S: AsyncRead + AsyncWrite + Unpin>(mut s: S, api: Arc<Api>, role: Role) {
    let resp = match http::read_request(&mut s).await {
        Ok(req) => api.handle(role, &req).await,
        Err(e) => e.response(),
    };
    http::write_response(&mut s, &resp).await;
}

/// Pause after a failed `accept` (e.g. out of file descriptors).
const ACCEPT_RETRY: std::time::Duration = std::time::Duration::from_millis(100);

/// Bind `listen` and serve `role`'s endpoints until `stop` flips.
pub async fn serve(
    listen: &str,
    role: Role,
    api: Arc<Api>,
    mut stop: watch::Receiver<bool>,
) -> Result<(), ServeError> {
    let addr = parse_admin_listen(listen).ok_or_else(|| ServeError::Address(listen.into()))?;
    let l = Listener::bind(&addr).await?;
    tokio::spawn(async move {
        loop {
            tokio::select! {
                r = l.accept_one(&api, role) => if r.is_err() {
                    // Out of fds: the request stays queued; retry later
                    // instead of spinning on the error.
                    tokio::time::sleep(ACCEPT_RETRY).await;
                },
                _ = stop.changed() => return,
            }
        }
    });
    Ok(())
}
