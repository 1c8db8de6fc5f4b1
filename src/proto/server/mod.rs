//! The receiving side of the protocol, sans-IO: command framing and parsing, DATA content.
//! The sink's session logic is built on these.

pub mod command;
pub mod data;

pub use command::{CommandError, Line, MAX_COMMAND_LINE, ServerCommand, next_line, parse_command};
pub use data::DataReceiver;
