//! `bc-load`: Backchannel's load generator. Each subcommand is one scenario and prints
//! one JSON line on stdout (progress goes to stderr):
//!
//! ```text
//! bc-load fanout     # 500 rooms x (5 agents + 1 customer): the relay, Backchannel, Socket.IO
//! bc-load idle       # 10,000 idle connections: memory per connection
//! bc-load durable    # acknowledged notes per second, SQLite and PostgreSQL
//! bc-load cluster    # two nodes over Redis: cross-node delivery latency
//! bc-load resume     # thousands of clients reconnecting at once with `since`
//! bc-load stalled    # 1,000 sockets stop reading: everybody else's latency meanwhile
//! ```
//!
//! By default it spawns `backchannel` (beside this binary) with a fresh data directory
//! and a known secret, pinned to core 0, and pins itself to core 1. See
//! `bench/README.md` and `docs/benchmarks.md`.

use std::process::ExitCode;

use backchannel_bench::scenario::{self, cluster, durable, fanout, idle, resume, stalled, Common};
use backchannel_bench::sys;
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "bc-load", about = "Load generator for Backchannel")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Rooms of agents and a customer: paced notes and messages, fixed rate and
    /// saturation search, against the relay, Backchannel and Socket.IO.
    Fanout(fanout::FanoutArgs),
    /// Idle connections: server memory per connection.
    Idle(idle::IdleArgs),
    /// Acknowledged notes per second on SQLite and PostgreSQL.
    Durable(durable::DurableArgs),
    /// Two nodes over Redis: cross-node delivery latency.
    Cluster(cluster::ClusterArgs),
    /// Clients reconnecting at once with `since`: time until all caught up.
    Resume(resume::ResumeArgs),
    /// Sockets that stop reading and are closed with 4008: the others' latency
    /// meanwhile, against a baseline step without them.
    Stalled(stalled::StalledArgs),
}

impl Command {
    fn common(&self) -> &Common {
        match self {
            Command::Fanout(a) => &a.common,
            Command::Idle(a) => &a.common,
            Command::Durable(a) => &a.common,
            Command::Cluster(a) => &a.common,
            Command::Resume(a) => &a.common,
            Command::Stalled(a) => &a.common,
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // Starts the clock that send times in bodies are read on.
    backchannel_bench::stats::now_us();
    let common = cli.command.common().clone();
    match sys::raise_nofile() {
        Ok(limit) => eprintln!("bc-load: descriptor limit {limit}"),
        Err(e) => eprintln!("bc-load: cannot raise the descriptor limit: {e}"),
    }
    if !common.no_pin {
        let cores = scenario::parse_cores(&common.load_cores);
        if let Err(e) = sys::pin_self(&cores) {
            eprintln!("bc-load: cannot pin to cores {cores:?}: {e}");
        }
    }
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("bc-load: {e}");
            return ExitCode::FAILURE;
        }
    };
    let local = tokio::task::LocalSet::new();
    let result = local.block_on(&runtime, async move {
        match cli.command {
            Command::Fanout(args) => fanout::run(args).await,
            Command::Idle(args) => idle::run(args).await,
            Command::Durable(args) => durable::run(args).await,
            Command::Cluster(args) => cluster::run(args).await,
            Command::Resume(args) => resume::run(args).await,
            Command::Stalled(args) => stalled::run(args).await,
        }
    });
    match result {
        Ok(line) => {
            println!("{line}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("bc-load: {e}");
            ExitCode::FAILURE
        }
    }
}
