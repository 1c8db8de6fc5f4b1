//! The session's opening after the greeting: what EHLO's capabilities and the settings call
//! for next (STARTTLS, AUTH, or work), the TLS transition, and the AUTH exchange.

use std::time::Instant;

use super::config::StartTls;
use super::{Client, Event, Phase, SessionError};
use crate::proto::reply::{ReplyClass, ReplyParser, ReplyRef};

impl<T> Client<T> {
    /// The connection is now encrypted: at the start (implicit TLS), or after the handshake
    /// that [`Event::StartTls`] asked for. After STARTTLS everything learnt in plaintext is
    /// forgotten (RFC 3207 §4.2) and EHLO is sent again.
    pub fn tls_established(&mut self, now: Instant) {
        self.secure = true;
        if self.phase == Phase::TlsHandshake {
            self.caps = None;
            self.checkpoints.set_ehlo_marks(false);
            self.parser = ReplyParser::new();
            self.output_at = now;
            self.phase = Phase::SendEhlo;
        }
    }

    /// The TLS handshake failed.
    pub fn handle_tls_error(&mut self, error: SessionError) {
        if self.phase != Phase::Closed {
            self.fail(error);
        }
    }

    /// After EHLO (or a refused STARTTLS): upgrade to TLS, authenticate, or start work, as
    /// the settings and the server's capabilities say.
    pub(super) fn proceed(&mut self) -> Result<(), SessionError> {
        let Some(caps) = &self.caps else { return Err(SessionError::Abandoned("no capabilities")) };
        if !self.secure && !self.tls_declined {
            match (self.config.starttls, caps.starttls) {
                (StartTls::Off, _) => {}
                (_, true) => {
                    self.phase = Phase::SendStartTls;
                    return Ok(());
                }
                (StartTls::IfOffered, false) => {}
                (StartTls::Required, false) => return Err(SessionError::TlsUnavailable { reply: None }),
            }
        }
        if let Some(credentials) = self.config.auth.as_deref().filter(|_| !self.authenticated) {
            if !self.secure && !credentials.allow_plaintext {
                return Err(SessionError::AuthImpossible(
                    "the connection is not encrypted (use TLS, or allow plaintext AUTH explicitly)".into(),
                ));
            }
            let mechanism = credentials.choose(caps.auth).map_err(SessionError::AuthImpossible)?;
            self.phase = Phase::SendAuth { mechanism, exchange: None };
            return Ok(());
        }
        self.ready();
        Ok(())
    }

    /// A reply during AUTH: 235 is the only success; 334 asks for the next line; anything
    /// negative ends the session with the server's words.
    pub(super) fn on_auth_reply(&mut self, reply: &ReplyRef<'_>) -> Result<(), SessionError> {
        let Phase::Auth { mechanism, exchange } = self.phase else {
            return Err(SessionError::Abandoned("an AUTH reply outside an AUTH exchange"));
        };
        match reply.class() {
            ReplyClass::Positive => {
                self.authenticated = true;
                self.opening.auth = Some(self.input_at.saturating_duration_since(exchange.started));
                self.ready();
                Ok(())
            }
            // The answer goes out with the next transmit.
            ReplyClass::Intermediate => {
                self.phase = Phase::SendAuth { mechanism, exchange: Some(exchange) };
                Ok(())
            }
            _ => Err(SessionError::Auth { mechanism: mechanism.name(), reply: reply.to_owned() }),
        }
    }

    pub(super) fn ready(&mut self) {
        let caps = self.caps.as_ref();
        self.pipelining = caps.is_some_and(|c| c.pipelining) && self.config.pipelining;
        self.chunking = caps.is_some_and(|c| c.chunking) && self.config.chunking;
        self.phase = Phase::Ready;
        self.events.push_back(Event::Ready(self.opening));
        self.maybe_quit();
    }
}
