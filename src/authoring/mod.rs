//! `quiver plugin new|build|test`: writing a plugin without a broker.
//!
//! - [`scaffold`]: `new` writes a self-contained crate for one plugin kind, with the guest
//!   SDK and the WIT vendored into it, so it builds from anywhere, inside or outside a clone.
//! - [`build`](mod@build): `build` runs cargo for `wasm32-wasip2` and finds the component it made.
//! - [`sample`]: the parameters and sample messages `test` is given.
//! - [`trial`]: `test` loads the component with the broker's own host and limits, runs
//!   `init`, then one decision per sample message (optionally many, timed).
//!
//! The plugin host ([`crate::plugin`]) is used as the broker uses it; nothing here names
//! wasmtime.

pub mod build;
pub mod sample;
pub mod scaffold;
pub mod trial;

use std::io;
use std::path::PathBuf;
use std::process::ExitStatus;

use clap::{Args, Subcommand};

use crate::message::TopicName;
use crate::plugin::{PluginError, PluginKind};

/// `quiver plugin ...`.
#[derive(Debug, Args)]
pub struct PluginArgs {
    #[command(subcommand)]
    pub command: PluginCommand,
}

#[derive(Debug, Subcommand)]
pub enum PluginCommand {
    /// Create a plugin crate (filter, sampler or router) that builds to a component.
    New(NewArgs),
    /// Build a plugin crate for wasm32-wasip2 and print the path of its component.
    Build(BuildArgs),
    /// Run a plugin on sample messages with the broker's host and limits, and print its
    /// decisions.
    Test(TestArgs),
}

#[derive(Debug, Args)]
pub struct NewArgs {
    /// The crate's name: letters, digits, '-' and '_', starting with a letter.
    pub name: String,
    /// Which world the plugin targets.
    #[arg(long)]
    pub kind: PluginKind,
    /// Directory to create [default: ./NAME]. It must not exist.
    #[arg(long)]
    pub dir: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct BuildArgs {
    /// The plugin crate (or a workspace of plugins).
    #[arg(default_value = ".")]
    pub dir: PathBuf,
}

#[derive(Debug, Args)]
pub struct TestArgs {
    /// The component (.wasm) to run.
    pub file: PathBuf,
    /// Which world it targets.
    #[arg(long)]
    pub kind: PluginKind,
    /// A parameter for `init`, as key=value; repeatable.
    #[arg(long = "param", short = 'p', value_parser = sample::parse_param)]
    pub params: Vec<(String, String)>,
    /// A message as JSON: {"headers":{"k":"v"},"body":"...","attempts":1,"topic":"t"};
    /// repeatable. Without any, one empty message.
    #[arg(long = "message", short = 'm')]
    pub messages: Vec<String>,
    /// A file of messages, one JSON object per line (`-`: stdin); run after --message.
    #[arg(long = "messages")]
    pub messages_file: Option<PathBuf>,
    /// The topic of messages that do not name one.
    #[arg(long, default_value = "test")]
    pub topic: TopicName,
    /// Run each message N times and print the median nanoseconds per call.
    #[arg(long, value_name = "N")]
    pub bench: Option<u64>,
    /// Most CPU time one decision may use, instead of the broker's default (10ms), e.g. 1s;
    /// its wall-clock backstop is 10 times that.
    #[arg(long, value_parser = crate::config::parse_duration)]
    pub call_timeout: Option<std::time::Duration>,
    /// One JSON object per message instead of text.
    #[arg(long)]
    pub json: bool,
}

/// Runs one `quiver plugin` command, writing its results to stdout.
pub fn run(args: PluginArgs) -> Result<(), AuthoringError> {
    let mut stdout = io::stdout().lock();
    match args.command {
        PluginCommand::New(args) => {
            let dir = scaffold::create(&args.name, args.kind, args.dir.as_deref())?;
            scaffold::print_next_steps(&mut stdout, &args.name, args.kind, &dir)
                .map_err(AuthoringError::Stdout)
        }
        PluginCommand::Build(args) => {
            for wasm in build::build(&args.dir)? {
                use io::Write as _;
                writeln!(stdout, "{}", wasm.display()).map_err(AuthoringError::Stdout)?;
            }
            Ok(())
        }
        PluginCommand::Test(args) => trial::run(&args, &mut stdout),
    }
}

/// Why a `quiver plugin` command failed.
#[derive(Debug, thiserror::Error)]
pub enum AuthoringError {
    #[error("invalid plugin name {name:?}: {reason}")]
    BadName { name: String, reason: String },
    #[error("{} already exists; choose another name or --dir", path.display())]
    Exists { path: PathBuf },
    #[error("cannot write {}", path.display())]
    Write {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot run `{command}`")]
    Spawn {
        command: String,
        #[source]
        source: io::Error,
    },
    #[error("`{command}` failed ({status}){output}")]
    Tool {
        command: String,
        status: ExitStatus,
        /// What it printed, when it was captured (cargo's build output goes straight through).
        output: String,
    },
    #[error("cannot read the output of `cargo metadata`: {detail}")]
    Metadata { detail: String },
    #[error("the build of {} produced no component: no cdylib target found", dir.display())]
    NoComponent { dir: PathBuf },
    #[error("cannot read messages from {}", path.display())]
    ReadMessages {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("message {origin}: {reason}")]
    BadMessage { origin: String, reason: String },
    #[error("parameter `{key}` is given twice")]
    DuplicateParam { key: String },
    #[error(transparent)]
    Plugin(#[from] PluginError),
    #[error("cannot write to stdout")]
    Stdout(#[source] io::Error),
}
