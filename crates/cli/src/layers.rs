//! The layering of settings, written once: the [`settings!`] macro turns a table of settings
//! into a clap flag each (read also from `CORTEX_<FLAG>`, its help showing the default), a TOML
//! file with the same keys in snake case, the merge of the two (flag or environment over file)
//! and the application onto a [`Config`] of defaults, and the rows of the configuration
//! reference ([`Row`]). Also the kinds of application a row may name: [`set`] a place, parse a
//! [`duration`] into one, [`with`] or [`checked`] a function, or [`outside`] the config.

use std::fmt::Display;
use std::marker::PhantomData;
use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result};
use cortex_realtime::Config;
use serde::de::DeserializeOwned;

/// Generates, from one row per setting (`name: Option<T>` or `Vec<T>`, how the value is applied,
/// the help sentence), a struct that is at once the clap arguments and the TOML file, and its
/// `into_config`. `defaults` is the function giving the config that settings are applied onto;
/// the help's `[default: ...]` is read from it.
macro_rules! settings {
    (
        defaults: $base:path;
        $(#[$meta:meta])*
        $vis:vis struct $Name:ident {
            $( $(#[$arg:meta])* $name:ident: $ty:ty => $how:expr, $help:literal; )*
        }
    ) => {
        $(#[$meta])*
        #[derive(clap::Args, serde::Deserialize, Debug, Default)]
        #[serde(default, deny_unknown_fields)]
        $vis struct $Name {
            $(
                #[arg(
                    long,
                    env = $crate::layers::env_var(stringify!($name)),
                    help = $crate::layers::help::<<$ty as $crate::layers::Layer>::Value, _>(
                        &$how, $help, $base(),
                    ),
                )]
                $(#[$arg])*
                $name: $ty,
            )*
        }

        impl $Name {
            /// These settings (from the flags and the environment) over those of the TOML file
            /// at `file`: each one set here, else as the file sets it.
            $vis fn over_file(self, file: Option<&std::path::Path>) -> anyhow::Result<$Name> {
                let file: $Name = match file {
                    Some(path) => $crate::layers::read_toml(path)?,
                    None => $Name::default(),
                };
                Ok($Name {
                    $( $name: $crate::layers::Layer::over(self.$name, file.$name), )*
                })
            }

            /// These settings applied in the table's order onto the defaults.
            $vis fn into_config(self) -> anyhow::Result<Config> {
                let mut config = $base();
                $(
                    $crate::layers::apply(&mut config, stringify!($name), self.$name, $how)?;
                )*
                Ok(config)
            }

            /// One [`Row`]($crate::layers::Row) per setting, in the table's order: the
            /// configuration reference (docs/operations.md).
            #[cfg_attr(not(test), allow(dead_code))]
            $vis fn reference() -> Vec<$crate::layers::Row> {
                vec![$(
                    $crate::layers::row::<<$ty as $crate::layers::Layer>::Value, _>(
                        stringify!($name), &$how, $help, $base(),
                    ),
                )*]
            }
        }
    };
}
pub(crate) use settings;

/// A setting's value in one layer: unset, or set.
pub trait Layer {
    /// What is applied when the setting is set.
    type Value;
    /// `self` where it is set, else `below`.
    fn over(self, below: Self) -> Self;
    /// The value, when set.
    fn into_value(self) -> Option<Self::Value>;
}

impl<T> Layer for Option<T> {
    type Value = T;
    fn over(self, below: Self) -> Self {
        self.or(below)
    }
    fn into_value(self) -> Option<T> {
        self
    }
}

/// A list is set when it holds an element, and then replaces the list below as a whole.
impl<T> Layer for Vec<T> {
    type Value = Vec<T>;
    fn over(self, below: Self) -> Self {
        if self.is_empty() { below } else { self }
    }
    fn into_value(self) -> Option<Vec<T>> {
        (!self.is_empty()).then_some(self)
    }
}

/// How the value of a setting lands on a [`Config`], and the default it finds there.
pub trait Apply<T> {
    /// Puts `v` on `c`; `flag` (e.g. `auth-timeout`) names the setting in errors.
    fn apply(&self, c: &mut Config, flag: &str, v: T) -> Result<()>;
    /// The default to show in the help, read from the defaults; `None` shows none.
    fn default_in(&self, defaults: &mut Config) -> Option<String>;
    /// What the value is written as, when not what its type says ([`Kind`]).
    fn kind(&self) -> Option<String> {
        None
    }
}

/// The value is stored in the place `at` finds; that place in the defaults is the default.
pub fn set<T: Display, F: Fn(&mut Config) -> &mut T>(at: F) -> Set<F> {
    Set(at)
}

/// See [`set`].
pub struct Set<F>(F);

impl<T: Display, F: Fn(&mut Config) -> &mut T> Apply<T> for Set<F> {
    fn apply(&self, c: &mut Config, _flag: &str, v: T) -> Result<()> {
        *(self.0)(c) = v;
        Ok(())
    }
    fn default_in(&self, defaults: &mut Config) -> Option<String> {
        Some((self.0)(defaults).to_string())
    }
}

/// A duration written for humantime (`300ms`, `5s`, `2m`), stored in the place `at` finds; that
/// place in the defaults is the default.
pub fn duration<F: Fn(&mut Config) -> &mut Duration>(at: F) -> Dur<F> {
    Dur(at)
}

/// See [`duration`].
pub struct Dur<F>(F);

/// How a duration is written, in the configuration reference.
pub const DURATION: &str = "duration (`300ms`, `5s`, `2m`, `1h`)";

impl<F: Fn(&mut Config) -> &mut Duration> Apply<String> for Dur<F> {
    fn apply(&self, c: &mut Config, flag: &str, v: String) -> Result<()> {
        *(self.0)(c) = humantime::parse_duration(&v)
            .with_context(|| format!("--{flag}: not a duration: {v}"))?;
        Ok(())
    }
    fn default_in(&self, defaults: &mut Config) -> Option<String> {
        Some(humantime::format_duration(*(self.0)(defaults)).to_string())
    }
    fn kind(&self) -> Option<String> {
        Some(DURATION.to_owned())
    }
}

/// The value is applied by `f` (added to a list, wrapped, filtered); no default is shown.
pub fn with<T, F: Fn(&mut Config, T)>(f: F) -> With<F, T> {
    With(f, PhantomData)
}

/// See [`with`].
pub struct With<F, T>(F, PhantomData<fn(T)>);

impl<T, F: Fn(&mut Config, T)> Apply<T> for With<F, T> {
    fn apply(&self, c: &mut Config, _flag: &str, v: T) -> Result<()> {
        (self.0)(c, v);
        Ok(())
    }
    fn default_in(&self, _defaults: &mut Config) -> Option<String> {
        None
    }
}

/// The value is applied by `f`, which may refuse it (a setting that excludes another); no
/// default is shown.
pub fn checked<T, F: Fn(&mut Config, T) -> Result<()>>(f: F) -> Checked<F, T> {
    Checked(f, PhantomData)
}

/// See [`checked`].
pub struct Checked<F, T>(F, PhantomData<fn(T)>);

impl<T, F: Fn(&mut Config, T) -> Result<()>> Apply<T> for Checked<F, T> {
    fn apply(&self, c: &mut Config, _flag: &str, v: T) -> Result<()> {
        (self.0)(c, v)
    }
    fn default_in(&self, _defaults: &mut Config) -> Option<String> {
        None
    }
}

/// The value is read by the command itself before there is a [`Config`] (the log format):
/// nothing lands on the config; `default` is shown.
pub fn outside<T>(default: &'static str) -> Outside<T> {
    Outside(default, PhantomData)
}

/// See [`outside`].
pub struct Outside<T>(&'static str, PhantomData<fn(T)>);

impl<T> Apply<T> for Outside<T> {
    fn apply(&self, _c: &mut Config, _flag: &str, _v: T) -> Result<()> {
        Ok(())
    }
    fn default_in(&self, _defaults: &mut Config) -> Option<String> {
        Some(self.0.to_owned())
    }
}

/// `how`, with its value written as `kind` in the configuration reference (a duration that a
/// [`checked`] function parses itself).
pub fn written_as<A>(kind: &'static str, how: A) -> WrittenAs<A> {
    WrittenAs(kind, how)
}

/// See [`written_as`].
pub struct WrittenAs<A>(&'static str, A);

impl<T, A: Apply<T>> Apply<T> for WrittenAs<A> {
    fn apply(&self, c: &mut Config, flag: &str, v: T) -> Result<()> {
        self.1.apply(c, flag, v)
    }
    fn default_in(&self, defaults: &mut Config) -> Option<String> {
        self.1.default_in(defaults)
    }
    fn kind(&self) -> Option<String> {
        Some(self.0.to_owned())
    }
}

/// What a setting's value is written as, for the configuration reference.
pub trait Kind {
    /// A few words: `integer`, `file path`, `duration`...
    fn kind() -> String;
}

macro_rules! kinds {
    ($($t:ty => $k:literal),* $(,)?) => {
        $(impl Kind for $t {
            fn kind() -> String {
                $k.to_owned()
            }
        })*
    };
}

kinds! {
    usize => "integer",
    u32 => "integer",
    u64 => "integer",
    String => "text",
    std::path::PathBuf => "file path",
    std::net::SocketAddr => "address (IP:PORT)",
    crate::logging::LogFormat => "`text` or `json`",
}

impl<T: Kind> Kind for Vec<T> {
    fn kind() -> String {
        format!(
            "list of {} (repeat the flag; comma-separated in the environment)",
            T::kind()
        )
    }
}

/// One setting in the configuration reference: how it is given, its default and what it does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Row {
    /// `--flag-name`.
    pub flag: String,
    /// `CORTEX_FLAG_NAME`.
    pub env: String,
    /// The key in the `--config` TOML file.
    pub key: String,
    /// What the value is written as (and so its unit, with the help sentence).
    pub kind: String,
    /// The default, when there is one.
    pub default: Option<String>,
    /// The help sentence, without its default.
    pub help: String,
}

/// The [`Row`] of the setting `name`, applied by `how`.
pub fn row<T: Kind, A: Apply<T>>(name: &str, how: &A, sentence: &str, mut defaults: Config) -> Row {
    // A default the sentence states itself (`[default: cortex]`) when the row cannot read one.
    let (help, stated) = match sentence.rsplit_once(" [default: ") {
        Some((help, d)) => (help.to_owned(), d.strip_suffix(']').map(str::to_owned)),
        None => (sentence.to_owned(), None),
    };
    Row {
        flag: format!("--{}", name.replace('_', "-")),
        env: env_var(name),
        key: name.to_owned(),
        kind: how.kind().unwrap_or_else(T::kind),
        default: how.default_in(&mut defaults).or(stated),
        help,
    }
}

/// The variable a setting is also read from: `CORTEX_` and its name in upper case.
pub fn env_var(name: &str) -> String {
    format!("CORTEX_{}", name.to_uppercase())
}

/// The help of a setting: its sentence, then the default `how` finds in `defaults`.
pub fn help<T, A: Apply<T>>(how: &A, sentence: &str, mut defaults: Config) -> String {
    match how.default_in(&mut defaults) {
        Some(d) => format!("{sentence} [default: {d}]"),
        None => sentence.to_owned(),
    }
}

/// Applies a setting that is set, named by its field name (the flag is in kebab case).
pub fn apply<L: Layer, A: Apply<L::Value>>(
    c: &mut Config,
    name: &str,
    value: L,
    how: A,
) -> Result<()> {
    match value.into_value() {
        Some(v) => how.apply(c, &name.replace('_', "-"), v),
        None => Ok(()),
    }
}

/// Reads the TOML file at `path`.
pub fn read_toml<T: DeserializeOwned>(path: &Path) -> Result<T> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    toml::from_str(&text).with_context(|| format!("parsing {}", path.display()))
}
