//! What `splitway ctl fleet` does against etcd: list the live relays
//! (their presence records), and rotate the fleet's leg key in three
//! steps, each waited for on every live relay:
//! 1. add the new key everywhere (relays accept both keys);
//! 2. make it the signing key (`P/auth/send_key`);
//! 3. after a grace period, retire every other key.
//!
//! A relay accepts a leg signed by any key it holds, so no step can fail a
//! handshake: each relay signs with the new key only once every relay
//! accepts it, and the old key goes only once no relay signs with it.

use std::time::{Duration, Instant};

use etcd_client::{Client, GetOptions};
use splitway_core::fleet::{FleetConf, Layout, Presence};

use super::{connect, within, FleetIoError};

/// A rotation that could not finish; etcd holds the state of the step
/// named, and running the same command again continues from there.
#[derive(Debug, thiserror::Error)]
pub enum RotateError {
    #[error(transparent)]
    Io(#[from] FleetIoError),
    #[error("key id {0} already holds a different secret; pick another id")]
    IdInUse(u8),
    #[error("step \"{step}\" did not reach every live relay within {waited:?}; behind: {behind}")]
    Lagging {
        step: &'static str,
        waited: Duration,
        behind: String,
    },
}

const T: Duration = Duration::from_secs(5);

/// Every relay with a presence record, by name.
pub async fn list(client: &mut Client, layout: &Layout) -> Result<Vec<Presence>, FleetIoError> {
    let r = within(
        T,
        client.get(layout.presence_dir(), Some(GetOptions::new().with_prefix())),
    )
    .await?;
    let mut out = Vec::new();
    for kv in r.kvs() {
        let name = kv
            .key_str()
            .ok()
            .and_then(|k| k.strip_prefix(&layout.presence_dir()))
            .unwrap_or("?")
            .to_string();
        match serde_json::from_slice::<Presence>(kv.value()) {
            Ok(p) => out.push(p),
            Err(e) => out.push(Presence {
                node: name,
                refused: Some(format!("unreadable presence record: {e}")),
                ..Presence::default()
            }),
        }
    }
    out.sort_by(|a, b| a.node.cmp(&b.node));
    Ok(out)
}

/// Connect with `conf` and list.
pub async fn list_with(conf: &FleetConf) -> Result<Vec<Presence>, FleetIoError> {
    let mut c = connect(conf).await?;
    list(&mut c, &conf.layout()).await
}

/// Wait until every live relay satisfies `ok`.
async fn wait_all(
    client: &mut Client,
    layout: &Layout,
    step: &'static str,
    timeout: Duration,
    ok: impl Fn(&Presence) -> bool,
) -> Result<usize, RotateError> {
    let began = Instant::now();
    loop {
        let relays = list(client, layout).await?;
        let behind: Vec<String> = relays
            .iter()
            .filter(|p| !ok(p))
            .map(|p| match &p.refused {
                Some(r) => format!("{} (refused {r})", p.node),
                None => p.node.clone(),
            })
            .collect();
        if behind.is_empty() {
            return Ok(relays.len());
        }
        if began.elapsed() >= timeout {
            return Err(RotateError::Lagging {
                step,
                waited: timeout,
                behind: behind.join(", "),
            });
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Rotate to key `id` with `secret` (hex). `progress` hears each step.
pub async fn rotate_key(
    conf: &FleetConf,
    id: u8,
    secret: &str,
    grace: Duration,
    timeout: Duration,
    progress: &mut dyn FnMut(String),
) -> Result<(), RotateError> {
    let layout = conf.layout();
    let mut c = connect(conf).await?;
    let key = layout.key(id);
    let have = within(T, c.get(key.as_str(), None)).await?;
    match have.kvs().first() {
        Some(kv) if kv.value() != secret.as_bytes() => return Err(RotateError::IdInUse(id)),
        Some(_) => {}
        None => {
            within(T, c.put(key.as_str(), secret, None)).await?;
        }
    }
    let n = wait_all(&mut c, &layout, "add the new key", timeout, |p| {
        p.key_ids.contains(&id)
    })
    .await?;
    progress(format!("1/3 key {id} added; {n} live relays hold it"));
    within(T, c.put(layout.send_key(), id.to_string(), None)).await?;
    let n = wait_all(&mut c, &layout, "switch the signing key", timeout, |p| {
        p.send_key == Some(id)
    })
    .await?;
    progress(format!("2/3 key {id} signs; {n} live relays switched"));
    tokio::time::sleep(grace).await;
    let all = within(
        T,
        c.get(
            format!("{}keys/", layout.auth()),
            Some(GetOptions::new().with_prefix()),
        ),
    )
    .await?;
    let keep = key.as_bytes().to_vec();
    for kv in all.kvs() {
        if kv.key() != keep.as_slice() {
            within(T, c.delete(kv.key().to_vec(), None)).await?;
        }
    }
    let n = wait_all(&mut c, &layout, "retire the old keys", timeout, |p| {
        p.key_ids == [id]
    })
    .await?;
    progress(format!(
        "3/3 old keys retired; {n} live relays hold only key {id}"
    ));
    Ok(())
}
