//! Broker mode: several nodes joined by a NATS server. The client and placement ([`client`]),
//! the messages between nodes ([`protocol`]), what a node serves to the others ([`serve`]), its
//! mirrors of orders owned elsewhere ([`remote_watch`]) and the forwarding of REST calls to an
//! order's owner ([`forward`], [`replay`]).

pub mod client;
pub mod forward;
pub mod protocol;
pub mod remote_watch;
pub mod replay;
pub mod serve;
