//! `cohort ctl events [--kind K,..] [--since SEQ] [--follow]`: the node's decision log
//! (`GET /admin/events`, docs/operations.md "The decision log").
//!
//! Without `--follow` it prints what the ring holds after `--since`; with it, it keeps asking
//! for what follows (every [`FOLLOW_EVERY`]) and prints each decision as it appears, one line per
//! decision (one JSON object per line with `-o json`), until interrupted. A reader that fell
//! behind the ring is told on stderr how it happened (`missed`), never silently.

use std::io::Write;
use std::time::Duration;

use clap::Args;
use serde::Deserialize;
use serde_json::Value;

use super::render::{Cell, Paint, Table};
use super::views::parse;
use super::{CtlError, Ctx, Done};

const EVENTS: &str = "GET /admin/events";
/// How often `--follow` asks for new decisions.
pub(crate) const FOLLOW_EVERY: Duration = Duration::from_millis(500);

/// `cohort ctl events`.
#[derive(Args, Debug)]
pub(crate) struct EventsArgs {
    /// Only these kinds (comma-separated or repeated): MemberUp, MemberSuspected, MemberDown,
    /// MemberLeft, LeaderElected, VoterTransition, DegradedModeChanged, FramesDropped,
    /// SubsystemRestarted, NameRevoked.
    #[arg(long, value_delimiter = ',', value_name = "KIND")]
    kind: Vec<String>,
    /// Decisions after this sequence number (0: everything the node still keeps).
    #[arg(long, default_value_t = 0, value_name = "SEQ")]
    since: u64,
    /// Keep printing decisions as the node records them, until interrupted.
    #[arg(long, short = 'f')]
    follow: bool,
}

#[derive(Debug, Deserialize)]
struct Page {
    events: Vec<Decision>,
    next: u64,
    missed: bool,
}

#[derive(Debug, Deserialize)]
struct Decision {
    seq: u64,
    at_ms: u64,
    kind: String,
    subject: String,
    summary: String,
}

fn ask(ctx: &Ctx, since: u64, kinds: &[String]) -> Result<(Value, Page), CtlError> {
    let mut query = vec![("since", since.to_string())];
    if !kinds.is_empty() {
        query.push(("kind", kinds.join(",")));
    }
    let value = ctx.client.get(&["admin", "events"], &query)?;
    let page: Page = parse(EVENTS, &value)?;
    Ok((value, page))
}

/// `cohort ctl events`.
pub(crate) fn events(ctx: &Ctx, args: &EventsArgs) -> Result<Done, CtlError> {
    let (value, page) = ask(ctx, args.since, &args.kind)?;
    if !args.follow {
        if ctx.json {
            return Ok(Done::ok(Ctx::json_out(&value)));
        }
        let mut done = Done::ok(table(&page.events).render(ctx.color));
        if page.missed {
            done.notes.push("older decisions were evicted from the node's log before this read".into());
        }
        return Ok(done);
    }
    let mut out = std::io::stdout().lock();
    let (mut value, mut page) = (value, page);
    loop {
        if page.missed {
            eprintln!("cohort ctl: decisions were evicted from the node's log before this reader saw them");
        }
        // With -o json, each decision as the node sent it (evidence included), one per line.
        let raw = value["events"].as_array().cloned().unwrap_or_default();
        for (decision, raw) in page.events.iter().zip(raw) {
            let line = if ctx.json { raw.to_string() } else { line(decision, ctx.color) };
            if writeln!(out, "{line}").and_then(|()| out.flush()).is_err() {
                // The reader left (`| head`): done.
                return Ok(Done::ok(String::new()));
            }
        }
        std::thread::sleep(FOLLOW_EVERY);
        (value, page) = ask(ctx, page.next, &args.kind)?;
    }
}

fn table(decisions: &[Decision]) -> Table {
    let mut table = Table::new(&["SEQ", "UTC", "KIND", "SUBJECT", "SUMMARY"]).right_aligned(&[0]);
    for d in decisions {
        table.row(vec![
            d.seq.into(),
            clock(d.at_ms).into(),
            Cell::painted(&d.kind, paint(&d.kind)),
            d.subject.as_str().into(),
            d.summary.as_str().into(),
        ]);
    }
    table
}

fn line(d: &Decision, color: bool) -> String {
    let kind = format!("{:<20}", super::render::clean(&d.kind));
    format!(
        "{:>6}  {}  {}  {}",
        d.seq,
        clock(d.at_ms),
        paint(&d.kind).apply(&kind, color),
        super::render::clean(&d.summary)
    )
}

fn paint(kind: &str) -> Paint {
    match kind {
        "MemberDown" | "FramesDropped" | "SubsystemRestarted" | "NameRevoked" => Paint::Bad,
        "MemberUp" | "LeaderElected" => Paint::Good,
        _ => Paint::Dim,
    }
}

/// `HH:MM:SS.mmm` of a Unix time in milliseconds (UTC; the date is left out: a log is read
/// the day it is written, and `-o json` has the full time).
fn clock(at_ms: u64) -> String {
    let ms = at_ms % 1000;
    let secs = at_ms / 1000 % 86_400;
    format!("{:02}:{:02}:{:02}.{ms:03}", secs / 3600, secs / 60 % 60, secs % 60)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_print_as_utc_clock_time() {
        // 2026-12-07 21:53:04.120 UTC.
        assert_eq!(clock(1_796_766_784_120), "21:53:04.120");
        assert_eq!(clock(0), "00:00:00.000");
    }
}
