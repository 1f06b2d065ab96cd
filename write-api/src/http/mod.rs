//! HTTP-side pieces of the commands: request metadata and the stored reply shape.

pub mod meta;
pub mod reply;
