//! The fast path for the commonest whole-message template (`--message`): a header section and
//! a body that are only text and `{{ name }}`, with header lines no value can change. Such a
//! message is compiled once into a plan: the fixed text between the values (header section,
//! the headers volley adds, body) joined and encoded for the wire ahead of time, and the values
//! each message brings. Rendering a message then copies the prepared text and encodes only the
//! values, straight into the message's buffer.
//!
//! The rendered header section is not checked again line by line: [`Simple::header_lines_fixed`]
//! proved at start that it has the template's lines, which were checked then. Anything the
//! plan does not handle as the general path would (a value minijinja must render, a header
//! value to refuse) makes it answer `None`, and the general path renders that row, errors
//! included. A property test holds the two to the same bytes.

use std::sync::Arc;
use std::time::SystemTime;

use minijinja::Value;

use super::simple::{Part, Simple, lookup};
use super::{header_text, unix_seconds, with_date};
use crate::proto::Body;
use crate::proto::body::Prepared;
use crate::proto::command::decimal_bytes;
use crate::send::input::{Row, Vars};
use crate::send::unsubscribe::Unsubscribe;

/// A piece of the headers volley adds to a raw template: fixed text, or a value of the message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Piece<'a> {
    Text(&'a str),
    /// The recipient's address.
    Email,
    /// The message's Date.
    Date,
    /// The recipient's input line (in the Message-ID).
    Line,
    /// The campaign's id (in the Message-ID): given when rendering, so that one plan can
    /// serve messages of many campaigns or requests.
    Campaign,
    /// The recipient's `List-Unsubscribe` value.
    Unsubscribe,
}

#[derive(Debug)]
enum Step {
    Text(Prepared),
    /// `column`: where the variable is in the rows of the CSV input bound (see [`Direct::bind`]).
    Var {
        name: String,
        header: bool,
        column: Option<usize>,
    },
    Email,
    Date,
    Line,
    Campaign,
    Unsubscribe(Arc<Unsubscribe>),
}

/// A raw template compiled for the fast path.
#[derive(Debug)]
pub(super) struct Direct {
    steps: Vec<Step>,
    /// The CSV input's column names, when bound: rows sharing them have each variable at a
    /// known column, found without comparing names.
    columns: Option<Arc<[String]>>,
}

impl Direct {
    /// The plan for `head` + the added headers (`added` gives them) + `body`, if the header
    /// section qualifies (see the module's comment).
    pub(super) fn new(
        head: &Simple,
        body: &Simple,
        unsubscribe: Option<&Arc<Unsubscribe>>,
        added: impl FnOnce(&mut dyn FnMut(Piece<'_>)),
    ) -> Option<Direct> {
        let mut skeleton = String::new();
        if !(head.header_lines_fixed(&mut skeleton)
            && head.ends_lines()
            && super::check_header_section(&skeleton).is_ok())
        {
            return None;
        }
        let mut plan = Plan { steps: Vec::new(), text: String::new() };
        plan.parts(head.parts(), true);
        added(&mut |piece| match piece {
            Piece::Text(text) => plan.text.push_str(text),
            Piece::Email => plan.step(Step::Email),
            Piece::Date => plan.step(Step::Date),
            Piece::Line => plan.step(Step::Line),
            Piece::Campaign => plan.step(Step::Campaign),
            Piece::Unsubscribe => {
                if let Some(u) = unsubscribe {
                    plan.step(Step::Unsubscribe(Arc::clone(u)));
                }
            }
        });
        plan.parts(body.parts(), false);
        plan.flush();
        Some(Direct { steps: plan.steps, columns: None })
    }

    /// Learns where each variable is in the rows of a CSV input with these column names.
    /// `email` stays the parsed address, and a name that is not a column is looked up as before.
    pub(super) fn bind(&mut self, columns: &Arc<[String]>) {
        for step in &mut self.steps {
            if let Step::Var { name, column, .. } = step {
                *column = columns.iter().position(|c| c == name).filter(|_| name != "email");
            }
        }
        self.columns = Some(Arc::clone(columns));
    }

    /// The value of variable `name` for `row`, and whether it is known to be printable ASCII.
    fn value<'a>(
        &self,
        row: &'a Row,
        campaign: &'a Value,
        name: &str,
        column: Option<usize>,
        digits: &'a mut [u8; 20],
    ) -> Option<(&'a str, bool)> {
        if let (Some(i), Vars::Csv { names, fields }, Some(bound)) = (column, &row.vars, &self.columns) {
            if Arc::ptr_eq(names, bound) {
                return fields.get(i).map(|v| (v, fields.is_plain()));
            }
        }
        lookup(row, campaign, name, digits).map(|v| (v, false))
    }

    /// The message for `row`, or `None`: leave it to the general path.
    pub(super) fn render(&self, row: &Row, campaign: &Value, now: SystemTime) -> Option<Body> {
        let built = Body::build(|w| {
            let mut digits = [0u8; 20];
            for step in &self.steps {
                match step {
                    Step::Text(text) => w.push_prepared(text),
                    Step::Var { name, header, column } => {
                        match self.value(row, campaign, name, *column, &mut digits)? {
                            // Printable ASCII: nothing to encode, and nothing a header refuses.
                            (value, true) => w.push_plain(value.as_bytes()),
                            (value, false) if *header => w.push(header_text(value).ok()?.as_bytes()),
                            (value, false) => w.push(value.as_bytes()),
                        }
                    }
                    Step::Email => w.push(row.email.as_str().as_bytes()),
                    Step::Date => with_date(unix_seconds(now), |date| w.push(date.as_bytes())),
                    Step::Line => w.push(decimal_bytes(row.line, &mut digits)),
                    Step::Campaign => w.push(campaign.as_str()?.as_bytes()),
                    Step::Unsubscribe(u) => {
                        let mut value = String::with_capacity(256);
                        u.write_header_value(campaign.as_str()?, row.email.as_str(), &mut value);
                        w.push(value.as_bytes());
                    }
                }
            }
            Some(())
        });
        built.map(|(body, ())| body)
    }
}

/// A plan being made: fixed text is gathered until a value comes, then prepared as one piece.
struct Plan {
    steps: Vec<Step>,
    text: String,
}

impl Plan {
    fn parts(&mut self, parts: &[Part], header: bool) {
        for part in parts {
            match part {
                Part::Text(text) => self.text.push_str(text),
                Part::Var(name) => self.step(Step::Var { name: name.clone(), header, column: None }),
            }
        }
    }

    fn step(&mut self, step: Step) {
        self.flush();
        self.steps.push(step);
    }

    fn flush(&mut self) {
        if !self.text.is_empty() {
            self.steps.push(Step::Text(Prepared::new(self.text.as_bytes())));
            self.text.clear();
        }
    }
}
