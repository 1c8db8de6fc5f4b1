//! `volley send`: a campaign from recipient rows and a message template, to each recipient's
//! MX hosts or a relay, through the same engine as `bench`.

pub mod dns;
pub mod input;
pub mod log;
pub mod template;
