//! The protocol core (filled in below).

pub mod durable;
pub mod message;
pub mod types;
