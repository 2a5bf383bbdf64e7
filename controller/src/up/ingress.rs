//! The ingress: one port on the host's loopback that routes by `Host` header —
//! `frontend.localhost:PORT` (or plain `frontend`) goes to the frontend's service address, as
//! an unauthenticated caller. It reads the request head, picks the service, then relays bytes
//! both ways; a connection stays with the service of its first request (browsers keep one
//! connection per host, so this is what they expect).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const MAX_HEAD: usize = 64 * 1024;

/// Serves until the task is dropped.
pub async fn serve(listener: std::net::TcpListener, routes: BTreeMap<String, SocketAddr>) {
    let Ok(listener) = TcpListener::from_std(listener) else {
        return;
    };
    let routes = Arc::new(routes);
    loop {
        let Ok((conn, _)) = listener.accept().await else {
            continue;
        };
        let routes = Arc::clone(&routes);
        tokio::spawn(async move {
            let _ = handle(conn, &routes).await;
        });
    }
}

/// The service a `Host` header names: `frontend.localhost:8000` → `frontend`.
pub fn service_of(host: &str) -> &str {
    let name = host.rsplit_once(':').map_or(host, |(h, _)| h);
    name.strip_suffix(".localhost").unwrap_or(name)
}

async fn handle(
    mut client: TcpStream,
    routes: &BTreeMap<String, SocketAddr>,
) -> std::io::Result<()> {
    let mut buf = Vec::with_capacity(4096);
    let mut chunk = [0u8; 4096];
    let end = loop {
        let n = client.read(&mut chunk).await?;
        if n == 0 {
            return Ok(());
        }
        buf.extend_from_slice(&chunk[..n]);
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i;
        }
        if buf.len() > MAX_HEAD {
            return reply(&mut client, "431 Request Header Fields Too Large", "").await;
        }
    };
    let head = String::from_utf8_lossy(&buf[..end]);
    let host = head.lines().skip(1).find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.trim()
            .eq_ignore_ascii_case("host")
            .then(|| v.trim().to_owned())
    });
    let Some(target) = host.as_deref().and_then(|h| routes.get(service_of(h))) else {
        let list: Vec<_> = routes.keys().map(|s| format!("{s}.localhost")).collect();
        let body = format!(
            "sluice up ingress: no service for Host {:?}; try one of: {}\n",
            host.unwrap_or_default(),
            list.join(", ")
        );
        return reply(&mut client, "404 Not Found", &body).await;
    };
    let mut upstream = match TcpStream::connect(target).await {
        Ok(s) => s,
        Err(e) => {
            let body = format!("sluice up ingress: cannot reach {target}: {e}\n");
            return reply(&mut client, "502 Bad Gateway", &body).await;
        }
    };
    upstream.write_all(&buf).await?;
    tokio::io::copy_bidirectional(&mut client, &mut upstream).await?;
    Ok(())
}

async fn reply(client: &mut TcpStream, status: &str, body: &str) -> std::io::Result<()> {
    let msg = format!(
        "HTTP/1.1 {status}\r\ncontent-type: text/plain\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    client.write_all(msg.as_bytes()).await?;
    client.shutdown().await
}

#[cfg(test)]
mod tests {
    #[test]
    fn host_names_a_service() {
        assert_eq!(super::service_of("frontend.localhost:8000"), "frontend");
        assert_eq!(super::service_of("frontend.localhost"), "frontend");
        assert_eq!(super::service_of("payments"), "payments");
    }
}
