//! `volley tls-report send DIR`'s mail: the reports for `mailto:` addresses (see
//! [`crate::deliver::tls_report::outbox`]) sent as a campaign of their own, one row per report
//! and address, with the report template: routed, signed, retried and logged as any campaign,
//! its list and log kept in `DIR/outbox/`.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use super::SendConfig;
use super::template::MessageSpec;
use crate::deliver::DeliveryConfig;
use crate::deliver::log::{Head, Status};
use crate::deliver::tls_report::mail;
use crate::deliver::tls_report::outbox::{Mailer, OutboxError, io};

/// Mails reports as campaigns.
pub struct CampaignMailer {
    /// Where each campaign's list and log are written.
    pub outbox: PathBuf,
    /// The reports' From: `addr@domain` or `Name <addr@domain>`.
    pub from: String,
    pub delivery: DeliveryConfig,
}

impl Mailer for CampaignMailer {
    fn mail(&mut self, rows: &[serde_json::Value]) -> Result<Vec<Result<String, String>>, OutboxError> {
        let outbox = &self.outbox;
        std::fs::create_dir_all(outbox).map_err(io(outbox))?;
        let stamp =
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis());
        let list = outbox.join(format!("reports-{stamp}.jsonl"));
        let mut text = String::new();
        for row in rows {
            text.push_str(&row.to_string());
            text.push('\n');
        }
        crate::deliver::write_synced(&list, text.as_bytes()).map_err(io(&list))?;
        let log = outbox.join(format!("log-{stamp}.jsonl"));
        let campaign = SendConfig {
            delivery: self.delivery.clone(),
            recipients: Some(list),
            queue: None,
            campaign: None,
            message: MessageSpec {
                message: Some(mail::TEMPLATE.to_owned()),
                from: Some(self.from.clone()),
                ..MessageSpec::default()
            },
            // One address may take several reports.
            dedupe: false,
            suppress: Vec::new(),
            log: log.clone(),
            resume: false,
            progress: false,
            metrics: false,
            tls_report: None,
        };
        let sending = super::start(campaign).map_err(|e| OutboxError::Mail(e.to_string()))?;
        while !sending.is_finished() {
            std::thread::sleep(Duration::from_millis(20));
        }
        let report = sending.finish().map_err(io(&log))?;
        if let Some(e) = report.books.log_error {
            return Err(OutboxError::Mail(e));
        }
        // Each row's final record, by its line (JSONL: the first row is line 1).
        let text = std::fs::read_to_string(&log).map_err(io(&log))?;
        let mut finals = BTreeMap::new();
        for line in text.lines() {
            let Some(Head { status: Some(status), id, .. }) = Head::read(line.as_bytes()) else { continue };
            if status.is_final() {
                let value: serde_json::Value = serde_json::from_str(line).unwrap_or_default();
                let text =
                    value["reply"].as_str().or_else(|| value["reason"].as_str()).unwrap_or(status.name());
                let why = match value["code"].as_u64() {
                    Some(code) => format!("{code} {text}"),
                    None => text.to_owned(),
                };
                finals.insert(id, (status, why));
            }
        }
        Ok((1..=rows.len() as u64)
            .map(|line| match finals.remove(&line) {
                Some((Status::Delivered, how)) => Ok(how),
                Some((_, why)) => Err(why),
                None => Err("no final record".into()),
            })
            .collect())
    }
}
