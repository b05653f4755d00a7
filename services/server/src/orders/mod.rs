//! The order lifecycle: the registry that finds (and starts) each active order's actor and routes
//! couriers' fixes, the order actor itself, and the stream it fans out to watchers (frames, the
//! resume buffer, slow-watcher handling).

pub mod approaches;
pub mod errors;
pub mod fanout;
pub mod frames;
pub mod messages;
pub mod order_actor;
pub mod registry;
pub mod resume_buffer;
