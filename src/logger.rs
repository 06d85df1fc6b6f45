// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause
//! A minimal `log` backend: `ivvmm: LEVEL: message` lines on stderr.

use std::io::Write;

use log::{Level, LevelFilter, Log, Metadata, Record};

struct StderrLogger;

impl Log for StderrLogger {
    fn enabled(&self, metadata: &Metadata) -> bool {
        metadata.level() <= log::max_level()
    }

    fn log(&self, record: &Record) {
        if !self.enabled(record.metadata()) {
            return;
        }
        let level = match record.level() {
            Level::Error => "error",
            Level::Warn => "warning",
            Level::Info => "info",
            Level::Debug => "debug",
            Level::Trace => "trace",
        };
        // One write per line so lines from different threads don't interleave.
        let line = format!("ivvmm: {level}: {}\n", record.args());
        let _ = std::io::stderr().lock().write_all(line.as_bytes());
    }

    fn flush(&self) {}
}

static LOGGER: StderrLogger = StderrLogger;

/// Installs the logger. `verbosity` counts `-v` flags: 0 shows warnings and
/// errors, 1 adds info, 2 debug, 3 trace. `IVVMM_LOG=info|debug|...`
/// overrides.
pub fn init(verbosity: u8) {
    let from_env = std::env::var("IVVMM_LOG")
        .ok()
        .and_then(|v| v.parse::<LevelFilter>().ok());
    let level = from_env.unwrap_or(match verbosity {
        0 => LevelFilter::Warn,
        1 => LevelFilter::Info,
        2 => LevelFilter::Debug,
        _ => LevelFilter::Trace,
    });
    // A second init (tests) keeps the first logger; only the level changes.
    let _ = log::set_logger(&LOGGER);
    log::set_max_level(level);
}

/// Whether the `n`th (from 1) of a repeated, guest- or peer-caused message
/// is logged: the 1st, 2nd, 4th, 8th, 16th… — a guest that hammers
/// something cannot flood the log, and the count still shows.
pub fn worth_logging(n: u64) -> bool {
    n.is_power_of_two()
}

#[cfg(test)]
mod tests {
    #[test]
    fn worth_logging_keeps_powers_of_two() {
        let logged: Vec<u64> = (0..=200).filter(|&n| super::worth_logging(n)).collect();
        assert_eq!(logged, [1, 2, 4, 8, 16, 32, 64, 128]);
    }
}
