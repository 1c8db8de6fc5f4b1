//! The SMTP protocol, sans-IO: parsers, encoders and state machines over byte slices.
//!
//! Nothing in here opens a socket, awaits, or reads a clock: time is passed in by the caller.
//! That keeps every rule testable in memory and the I/O drivers thin.

pub mod address;
pub mod body;
pub mod client;
pub mod command;
pub mod ehlo;
pub mod pattern;
pub mod reply;
pub mod server;

pub use address::{Address, AddressError, Domain};
pub use body::{Body, BodyEncoder, Framing, Head, HeadError};
pub use client::{
    Client, ClientConfig, Completed, Disposition, Envelope, Event, Message, SessionError, Timeouts, TxnResult,
};
pub use command::Command;
pub use ehlo::Capabilities;
pub use reply::{EnhancedCode, Reply, ReplyClass, ReplyError, ReplyParser, ReplyRef};
