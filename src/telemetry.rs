//! Logging setup: `tracing` with `LOG_LEVEL` as an env-filter and `LOG_FORMAT` text or json.
//! Text logs are coloured only on a terminal and never when `NO_COLOR` is set, so files and
//! pipes get plain text.

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;

use crate::config::LogFormat;

/// Colour only for a human at a terminal (<https://no-color.org>).
pub fn use_colour(no_color: Option<&str>, stdout_is_terminal: bool) -> bool {
    stdout_is_terminal && no_color.is_none_or(str::is_empty)
}

pub fn init(level: &str, format: LogFormat) {
    let filter = EnvFilter::try_new(level).unwrap_or_else(|_| EnvFilter::new("info"));
    let colour = use_colour(
        std::env::var("NO_COLOR").ok().as_deref(),
        std::io::stdout().is_terminal(),
    );
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(false)
        .with_ansi(colour);
    let _ = match format {
        LogFormat::Json => builder.json().try_init(),
        LogFormat::Text => builder.try_init(),
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn colour_only_on_a_terminal_without_no_color() {
        assert!(use_colour(None, true));
        assert!(!use_colour(None, false));
        assert!(!use_colour(Some("1"), true));
        assert!(use_colour(Some(""), true));
    }
}
