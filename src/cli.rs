//! How the config sections' flags are applied over the `--config` file, and `--help` with the
//! defaults the config holds.

use clap::{Args, FromArgMatches};
use detflow_engine::Config;

/// The flags of one config section `T` as given, applied over the `--config` file with
/// [`Flags::apply`]. The sections derive their flags (`clap::Args`) with no clap defaults (the
/// defaults are `T::default()`), so clap's update sets exactly the fields whose flag was given.
#[derive(Debug, Clone)]
pub(crate) struct Flags<T> {
    matches: clap::ArgMatches,
    section: std::marker::PhantomData<T>,
}

impl<T: Args> Args for Flags<T> {
    fn augment_args(cmd: clap::Command) -> clap::Command {
        // The update form: no section flag is required, as none has a default.
        T::augment_args_for_update(cmd)
    }
    fn augment_args_for_update(cmd: clap::Command) -> clap::Command {
        T::augment_args_for_update(cmd)
    }
}

impl<T> FromArgMatches for Flags<T> {
    fn from_arg_matches(matches: &clap::ArgMatches) -> Result<Self, clap::Error> {
        Ok(Flags {
            matches: matches.clone(),
            section: std::marker::PhantomData,
        })
    }
    fn update_from_arg_matches(&mut self, matches: &clap::ArgMatches) -> Result<(), clap::Error> {
        self.matches = matches.clone();
        Ok(())
    }
}

impl<T: FromArgMatches> Flags<T> {
    /// Set the fields of `section` whose flag was given.
    pub(crate) fn apply(&self, section: &mut T) -> Result<(), clap::Error> {
        section.update_from_arg_matches(&self.matches)
    }

    /// The section from the flags alone (for one whose fields are all optional).
    pub(crate) fn get(&self) -> Result<T, clap::Error> {
        T::from_arg_matches(&self.matches)
    }

    /// True when the flag of field `id` was given.
    pub(crate) fn given(&self, id: &str) -> bool {
        self.matches.value_source(id) == Some(clap::parser::ValueSource::CommandLine)
    }
}

/// Append `[default: V]` to the help of every settings flag that takes a value, with V read
/// from `Config::default()`, where the defaults are written once.
pub(crate) fn show_defaults(cli: clap::Command) -> clap::Command {
    let defaults = serde_json::to_value(Config::default()).unwrap_or_default();
    let default_of = |id: &str| {
        let v = defaults.as_object()?.values().find_map(|s| s.get(id))?;
        // A switch says its default in words ("on by default"); a list, in its help.
        if !(v.is_string() || v.is_number()) {
            return None;
        }
        let text = v.as_str().map_or_else(|| v.to_string(), str::to_owned);
        (!text.is_empty()).then_some(text)
    };
    let annotate = |arg: clap::Arg| {
        let default = arg
            .get_action()
            .takes_values()
            .then(|| default_of(arg.get_id().as_str()))
            .flatten();
        let Some(default) = default else { return arg };
        let with = |h: Option<&clap::builder::StyledStr>| {
            format!(
                "{} [default: {default}]",
                h.map(|h| h.to_string()).unwrap_or_default()
            )
        };
        let help = with(arg.get_help());
        let long = arg
            .get_long_help()
            .is_some()
            .then(|| with(arg.get_long_help()));
        let arg = arg.help(help);
        match long {
            Some(long) => arg.long_help(long),
            None => arg,
        }
    };
    cli.mut_subcommand("acquire", |c| c.mut_args(annotate))
        .mut_subcommand("serve", |c| c.mut_args(annotate))
        .mut_subcommand("stream2-send", |c| c.mut_args(annotate))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Cli, Command};
    use clap::{CommandFactory as _, Parser as _};
    use detflow_engine::Config;
    use detflow_hal::PixelType;

    /// `acquire`'s settings for `args` over the TOML `file`.
    fn settings(file: &str, args: &[&str]) -> anyhow::Result<Config> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.toml");
        std::fs::write(&path, file).unwrap();
        let mut argv = vec!["detflow", "acquire", "--config", path.to_str().unwrap()];
        argv.extend_from_slice(args);
        let Command::Acquire(acquire) = Cli::try_parse_from(argv)?.command else {
            unreachable!("acquire was parsed")
        };
        acquire.config()
    }

    #[test]
    fn a_switch_not_given_leaves_the_files_value() {
        let file = "[writer]\noverwrite = true\nlazy_open = true\nno_flush = true\n\
                    flush_interval = 0\nswmr = false\nauto_increment = false\n\
                    attributes = false\nperformance = false\n";
        let w = settings(file, &[]).unwrap().writer;
        assert!(w.overwrite && w.lazy_open && w.no_flush);
        assert!(!w.swmr && !w.auto_increment && !w.attributes && !w.performance);
        // The positive twins turn back on what the file turned off.
        let w = settings(file, &["--swmr", "--auto-increment"])
            .unwrap()
            .writer;
        assert!(w.swmr && w.auto_increment && w.overwrite);
        // The negative switches turn off what the file (or the default) turned on.
        let w = settings(
            "[writer]\nswmr = true\n",
            &[
                "--no-swmr",
                "--no-auto-increment",
                "--no-attributes",
                "--no-performance",
            ],
        )
        .unwrap()
        .writer;
        assert!(!w.swmr && !w.auto_increment && !w.attributes && !w.performance);
        // The last of a pair wins.
        assert!(settings("", &["--no-swmr", "--swmr"]).unwrap().writer.swmr);
        assert!(!settings("", &["--swmr", "--no-swmr"]).unwrap().writer.swmr);
    }

    #[test]
    fn flags_override_the_file_which_overrides_the_defaults() {
        let file = "[detector]\nframes = 7\nsize = \"64x48\"\n[ring]\nslots = 3\n\
                    [writer]\ncodec = \"lz4\"\nflush_interval = 2\n\
                    [backend]\nbackend = \"udp\"\nudp_listen = \"127.0.0.1:9000\"\n";
        let c = settings(file, &["--frames", "9", "--ring-policy", "drop-newest"]).unwrap();
        assert_eq!((c.detector.frames, c.detector.size.pair()), (9, (64, 48)));
        assert_eq!(
            (c.ring.slots, c.ring.policy),
            (3, detflow_ring::Policy::DropNewest)
        );
        assert_eq!(c.writer.codec, detflow_writer::Codec::Lz4);
        assert_eq!(c.detector.dtype, PixelType::U16, "the default stays");
        assert_eq!(c.backend.kind(), detflow_engine::config::BackendKind::Udp);
        // --no-flush clears the file's flush interval; given beside it, the interval stays
        // (and validation refuses the pair).
        let c = settings(file, &["--no-flush"]).unwrap();
        assert!(c.writer.no_flush && c.writer.flush_interval.is_zero());
        let c = settings(file, &["--no-flush", "--flush-interval", "3"]).unwrap();
        assert_eq!(c.writer.flush_interval.as_secs_f64(), 3.0);
        // A flag of another backend than the file's is refused by name.
        let e = settings(file, &["--fault-drop", "0.1"]).unwrap_err();
        assert!(
            e.to_string().starts_with("invalid fault-drop \"0.1\""),
            "{e}"
        );
        let c = settings(file, &["--backend", "sim", "--fault-drop", "0.1"]).unwrap();
        assert_eq!(c.backend.kind(), detflow_engine::config::BackendKind::Sim);
    }

    #[test]
    fn help_shows_the_defaults_of_the_config() {
        let mut cmd = show_defaults(Cli::command());
        let acquire = cmd.find_subcommand_mut("acquire").unwrap();
        let help = |id: &str| {
            let arg = acquire.get_arguments().find(|a| a.get_id() == id).unwrap();
            arg.get_help().unwrap().to_string()
        };
        assert!(
            help("frames").ends_with("[default: 100]"),
            "{}",
            help("frames")
        );
        assert!(help("slots").ends_with("[default: 0]"));
        assert!(help("codec").ends_with("[default: auto]"));
        assert!(!help("overwrite").contains("[default"));
    }
}
