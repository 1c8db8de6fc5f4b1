//! Fault injection: what a receiving server does to a bulk sender, chosen per stage with a
//! probability, from a seeded generator so runs repeat.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use thiserror::Error;

use crate::rng::Rng;

/// Where in the session a fault applies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    Greeting,
    Ehlo,
    Mail,
    Rcpt,
    /// The reply that accepts the message content: after the final dot, or to `BDAT ... LAST`.
    Data,
    Rset,
    Quit,
}

const STAGES: [(&str, Stage); 7] = [
    ("greeting", Stage::Greeting),
    ("ehlo", Stage::Ehlo),
    ("mail", Stage::Mail),
    ("rcpt", Stage::Rcpt),
    ("data", Stage::Data),
    ("rset", Stage::Rset),
    ("quit", Stage::Quit),
];

impl FromStr for Stage {
    type Err = FaultError;
    fn from_str(s: &str) -> Result<Self, FaultError> {
        STAGES
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(s))
            .map(|&(_, st)| st)
            .ok_or_else(|| FaultError::Stage(s.to_owned()))
    }
}

impl fmt::Display for Stage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name = STAGES.iter().find(|(_, st)| st == self).map_or("?", |(n, _)| n);
        f.write_str(name)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum FaultError {
    #[error("unknown stage {0:?} (expected one of greeting, ehlo, mail, rcpt, data, rset, quit)")]
    Stage(String),
    #[error("{0:?}: expected STAGE=VALUE")]
    Shape(String),
    #[error("{0:?}: reply code must be 400-599")]
    Code(String),
    #[error("{0:?}: probability must be between 0 and 1")]
    Probability(String),
    #[error("{0:?}: bad duration ({1})")]
    Duration(String, String),
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct FailRule {
    pub code: u16,
    pub probability: f64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DelayRule {
    pub base: Duration,
    /// The delay is uniform in `base ± jitter`.
    pub jitter: Duration,
}

/// What to do at a stage.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Normal,
    Fail(u16),
    Disconnect,
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct Faults {
    fail: [Vec<FailRule>; 7],
    delay: [Option<DelayRule>; 7],
    disconnect: [f64; 7],
}

fn split(spec: &str) -> Result<(Stage, &str), FaultError> {
    let (stage, value) = spec.split_once('=').ok_or_else(|| FaultError::Shape(spec.to_owned()))?;
    Ok((stage.trim().parse()?, value.trim()))
}

fn probability(spec: &str, s: &str) -> Result<f64, FaultError> {
    s.parse::<f64>()
        .ok()
        .filter(|p| (0.0..=1.0).contains(p))
        .ok_or_else(|| FaultError::Probability(spec.to_owned()))
}

fn duration(spec: &str, s: &str) -> Result<Duration, FaultError> {
    humantime::parse_duration(s).map_err(|e| FaultError::Duration(spec.to_owned(), e.to_string()))
}

impl Faults {
    /// `STAGE=CODE:PROBABILITY`, e.g. `rcpt=451:0.05`. A probability of 1 may be left out.
    pub fn add_fail(&mut self, spec: &str) -> Result<(), FaultError> {
        let (stage, value) = split(spec)?;
        let (code, p) = value.split_once(':').unwrap_or((value, "1"));
        let code = code
            .parse::<u16>()
            .ok()
            .filter(|c| (400..600).contains(c))
            .ok_or_else(|| FaultError::Code(spec.to_owned()))?;
        let probability = probability(spec, p)?;
        self.fail[stage as usize].push(FailRule { code, probability });
        Ok(())
    }

    /// `STAGE=DURATION[~JITTER]`, e.g. `data=50ms` or `greeting=1s~200ms`.
    pub fn add_delay(&mut self, spec: &str) -> Result<(), FaultError> {
        let (stage, value) = split(spec)?;
        let (base, jitter) = value.split_once('~').unwrap_or((value, "0s"));
        let rule = DelayRule { base: duration(spec, base)?, jitter: duration(spec, jitter)? };
        self.delay[stage as usize] = Some(rule);
        Ok(())
    }

    /// `STAGE=PROBABILITY`: drop the connection without replying.
    pub fn add_disconnect(&mut self, spec: &str) -> Result<(), FaultError> {
        let (stage, value) = split(spec)?;
        self.disconnect[stage as usize] = probability(spec, value)?;
        Ok(())
    }

    pub fn is_empty(&self) -> bool {
        *self == Faults::default()
    }

    /// Draws from `rng` only for stages that have rules, so adding a rule for one stage does
    /// not change the outcomes drawn at another.
    pub fn decide(&self, stage: Stage, rng: &mut Rng) -> Verdict {
        let i = stage as usize;
        if self.disconnect[i] > 0.0 && rng.next_f64() < self.disconnect[i] {
            return Verdict::Disconnect;
        }
        if self.fail[i].is_empty() {
            return Verdict::Normal;
        }
        let mut r = rng.next_f64();
        for rule in &self.fail[i] {
            if r < rule.probability {
                return Verdict::Fail(rule.code);
            }
            r -= rule.probability;
        }
        Verdict::Normal
    }

    pub fn delay(&self, stage: Stage, rng: &mut Rng) -> Option<Duration> {
        let rule = self.delay[stage as usize]?;
        if rule.jitter.is_zero() {
            return Some(rule.base);
        }
        let spread = rule.jitter.as_secs_f64() * (2.0 * rng.next_f64() - 1.0);
        Some(Duration::from_secs_f64((rule.base.as_secs_f64() + spread).max(0.0)))
    }
}

/// The reply line for an injected failure, with a plausible enhanced code.
pub fn failure_reply(code: u16, stage: Stage) -> String {
    let enhanced = match (code, stage) {
        (421, _) => "4.3.2",
        (450, _) => "4.2.0",
        (451, _) => "4.3.0",
        (452, _) => "4.3.1",
        (550, Stage::Rcpt) => "5.1.1",
        (552, _) => "5.3.4",
        (553, _) => "5.1.3",
        (c, _) if c >= 500 => "5.7.1",
        _ => "4.0.0",
    };
    format!("{code} {enhanced} Injected failure at {stage}\r\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_specs() {
        let mut f = Faults::default();
        f.add_fail("rcpt=451:0.05").unwrap();
        f.add_fail("rcpt=550:0.01").unwrap();
        f.add_fail("MAIL=421").unwrap();
        f.add_delay("data=50ms").unwrap();
        f.add_delay("greeting=1s~200ms").unwrap();
        f.add_disconnect("rcpt=0.01").unwrap();
        assert_eq!(
            f.fail[Stage::Rcpt as usize],
            vec![FailRule { code: 451, probability: 0.05 }, FailRule { code: 550, probability: 0.01 }]
        );
        assert_eq!(f.fail[Stage::Mail as usize], vec![FailRule { code: 421, probability: 1.0 }]);
        assert_eq!(
            f.delay[Stage::Data as usize],
            Some(DelayRule { base: Duration::from_millis(50), jitter: Duration::ZERO })
        );
        assert_eq!(f.disconnect[Stage::Rcpt as usize], 0.01);
        assert!(!f.is_empty());
    }

    #[test]
    fn rejects_bad_specs() {
        let mut f = Faults::default();
        assert_eq!(f.add_fail("rcpt"), Err(FaultError::Shape("rcpt".into())));
        assert_eq!(f.add_fail("body=451:0.1"), Err(FaultError::Stage("body".into())));
        assert_eq!(f.add_fail("rcpt=250:0.1"), Err(FaultError::Code("rcpt=250:0.1".into())));
        assert_eq!(f.add_fail("rcpt=451:1.5"), Err(FaultError::Probability("rcpt=451:1.5".into())));
        assert_eq!(f.add_disconnect("rcpt=x"), Err(FaultError::Probability("rcpt=x".into())));
        assert!(matches!(f.add_delay("data=soon"), Err(FaultError::Duration(..))));
        assert!(f.is_empty());
    }

    #[test]
    fn outcomes_follow_probabilities_and_seed() {
        let mut f = Faults::default();
        f.add_fail("rcpt=451:0.2").unwrap();
        f.add_fail("rcpt=550:0.1").unwrap();
        f.add_disconnect("rcpt=0.05").unwrap();
        let draw = |seed| {
            let mut rng = Rng::new(seed);
            (0..20_000).map(|_| f.decide(Stage::Rcpt, &mut rng)).collect::<Vec<_>>()
        };
        let a = draw(42);
        assert_eq!(a, draw(42), "same seed, same outcomes");
        let share = |v: Verdict| a.iter().filter(|&&x| x == v).count() as f64 / a.len() as f64;
        assert!((share(Verdict::Disconnect) - 0.05).abs() < 0.01);
        assert!((share(Verdict::Fail(451)) - 0.95 * 0.2).abs() < 0.015);
        assert!((share(Verdict::Fail(550)) - 0.95 * 0.1).abs() < 0.015);
        assert_eq!(f.decide(Stage::Mail, &mut Rng::new(1)), Verdict::Normal);
    }

    #[test]
    fn jitter_stays_in_range() {
        let mut f = Faults::default();
        f.add_delay("data=50ms~10ms").unwrap();
        let mut rng = Rng::new(3);
        for _ in 0..1000 {
            let d = f.delay(Stage::Data, &mut rng).unwrap();
            assert!(d >= Duration::from_millis(40) && d <= Duration::from_millis(60), "{d:?}");
        }
        assert_eq!(f.delay(Stage::Mail, &mut rng), None);
    }
}
