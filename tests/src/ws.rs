//! WebSocket plumbing shared by both streams: where the token goes, the upgrade request, and the
//! TCP socket underneath (for tests that watch the connection itself).

use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite;
use tokio_tungstenite::MaybeTlsStream;

use crate::TIMEOUT;

/// A client WebSocket of the harness: the client crate's.
pub use trackline_client::connect::Ws;

/// Where a WebSocket upgrade carries its token.
#[derive(Debug, Clone, Copy)]
pub enum TokenIn<'a> {
    None,
    /// `Authorization: Bearer <token>`.
    Header(&'a str),
    /// `?token=<token>` (what a browser does).
    Query(&'a str),
}

/// Opens a WebSocket on `url` (which may carry a query) and hands back the stream, or the error:
/// for clients that must outlive a server (no panics).
pub async fn ws_connect(
    url: &str,
    token: TokenIn<'_>,
    subprotocol: Option<&str>,
) -> anyhow::Result<Ws> {
    ws_connect_request(ws_request(url, token, subprotocol)?).await
}

/// Sends an upgrade request (built with [`ws_request`], perhaps with more headers) and hands
/// back the stream, or the error.
pub(crate) async fn ws_connect_request(
    request: tungstenite::handshake::client::Request,
) -> anyhow::Result<Ws> {
    let url = request.uri().to_string();
    let (ws, _response) = tokio::time::timeout(TIMEOUT, tokio_tungstenite::connect_async(request))
        .await
        .map_err(|_| anyhow::anyhow!("no upgrade answer from {url} within {TIMEOUT:?}"))??;
    Ok(ws)
}

/// The upgrade request of `url`, with the token and subprotocol where asked.
pub(crate) fn ws_request(
    url: &str,
    token: TokenIn<'_>,
    subprotocol: Option<&str>,
) -> anyhow::Result<tungstenite::handshake::client::Request> {
    // the client crate builds the request; the harness adds only the "no token at all" case
    let (token, token_in) = match token {
        TokenIn::None => ("", trackline_client::TokenIn::Header),
        TokenIn::Header(token) => (token, trackline_client::TokenIn::Header),
        TokenIn::Query(token) => (token, trackline_client::TokenIn::Query),
    };
    Ok(trackline_client::connect::upgrade_request(
        url,
        token,
        token_in,
        subprotocol,
    )?)
}

/// Sets `TCP_MAXSEG` on a socket before it connects (so it is announced in the SYN).
pub(crate) fn set_max_segment(socket: &tokio::net::TcpSocket, mss: u32) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    let value = libc::c_int::try_from(mss).map_err(std::io::Error::other)?;
    // SAFETY: setsockopt on a socket we own, with a pointer to a c_int and its size.
    let done = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_MAXSEG,
            std::ptr::addr_of!(value).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if done == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// The TCP socket under a WebSocket of the harness (always plain TCP): to read what the server
/// sent without the WebSocket layer answering pings, or to see the connection end.
pub fn tcp_of(ws: &mut Ws) -> &mut TcpStream {
    match ws.get_mut() {
        MaybeTlsStream::Plain(tcp) => tcp,
        _ => unreachable!("the harness speaks plain ws://"),
    }
}
