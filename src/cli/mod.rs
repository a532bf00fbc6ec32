//! The command line. Arguments are parsed raw by clap, then validated into
//! the typed settings each command runs with.

use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};
use shroud_crypto::Phase;

use crate::secagg_sim::{self, DropPhase, Neighbours, SimArgs};

mod audit_cmd;
mod bench_cmd;
mod bench_service;
mod budget_cmd;
mod compare_cmd;
mod data_cmd;
mod demo_cmd;
mod policy_cmd;
pub mod service_cmd;

#[derive(Parser)]
#[command(
    name = "shroud",
    version,
    about = "Privacy-hardened secure aggregation for a consortium"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run one whole secure-sum round in this process, every party included,
    /// and report its timing against raw ChaCha keystream throughput.
    SecaggSim(SecaggSimFlags),
    /// Work with policy files.
    #[command(subcommand)]
    Policy(PolicyCommand),
    /// Show the privacy budget recorded in a ledger.
    #[command(subcommand)]
    Budget(BudgetCommand),
    /// Run a whole consortium job on bundled data in this process: parties,
    /// coordinator, secure aggregation, DP noise and the ledger.
    Demo(demo_cmd::DemoFlags),
    /// Run strategies × partitions × ε × seeds from a spec in process and
    /// write one table (CSV, JSON) and one HTML page of plots; resumable.
    Compare(compare_cmd::CompareFlags),
    /// Re-render the audit report of a job's release decision from the log.
    Audit {
        #[arg(long)]
        db: std::path::PathBuf,
        #[arg(long)]
        job: String,
        /// Folder for audit-report.html and audit-report.json.
        #[arg(long, default_value = "out")]
        out: std::path::PathBuf,
    },
    /// Work with audit reports.
    #[command(subcommand)]
    Report(ReportCommand),
    /// Check the tamper-evident log's hash chain; name the first broken entry.
    VerifyLog {
        #[arg(long)]
        db: std::path::PathBuf,
    },
    /// Measure pipeline speed against raw ChaCha keystream in the same run.
    #[command(subcommand)]
    Bench(BenchCommand),
    /// Prepare data for trying a consortium out.
    #[command(subcommand)]
    Data(DataCommand),
    /// Make a party's (or the operator's) ed25519 identity key, or with
    /// --tls a self-signed certificate for the coordinator.
    Keygen(service_cmd::KeygenFlags),
    /// Run the coordinator: the HTTP API over TLS, the job engine and the
    /// store.
    Serve(service_cmd::ServeFlags),
    /// Run one party next to its data, joining the coordinator's jobs.
    Party(service_cmd::PartyFlags),
    /// Start, watch or abort jobs on a running coordinator (operator).
    #[command(subcommand)]
    Job(service_cmd::JobCommand),
}

#[derive(Subcommand)]
enum DataCommand {
    /// Deal a data set out to parties as standardised CSV files.
    Split(data_cmd::SplitFlags),
    /// Deal a data set out (IID, Dirichlet, pathological, quantity, or the
    /// ModelNet label sets R, D, S) and, with --stats, describe the subsets.
    Partition(data_cmd::SplitFlags),
    /// Train the frozen digits encoder FST-CBDG uses, on the public MNIST
    /// set brought to the digits format, and save it with its class
    /// prototypes as safetensors
    Encoder(data_cmd::EncoderFlags),
}

#[derive(Subcommand)]
enum ReportCommand {
    /// Check a JSON report and its sign-offs against the log, and say
    /// whether its model is approved.
    Verify {
        file: std::path::PathBuf,
        /// The coordinator's database holding the log.
        #[arg(long)]
        db: std::path::PathBuf,
    },
    /// Sign a report off as a reviewer the policy lists: a dated, signed
    /// verdict appended to the log and to the report (JSON and HTML).
    Sign {
        file: std::path::PathBuf,
        /// The coordinator's database holding the log.
        #[arg(long)]
        db: std::path::PathBuf,
        /// The reviewer's key file (`shroud keygen`).
        #[arg(long)]
        key: std::path::PathBuf,
        /// The reviewer's id in the policy's [[reviewer]] list.
        #[arg(long)]
        reviewer: String,
        /// accepted or rejected.
        #[arg(long, value_parser = ["accepted", "rejected"])]
        verdict: String,
        #[arg(long, default_value = "")]
        comment: String,
    },
}

#[derive(Subcommand)]
enum BenchCommand {
    /// Load test of the networked service: many parties, each a task with
    /// its own TLS connection, summing long vectors through a coordinator
    /// running as its own process; reports time per round and the
    /// coordinator's peak memory.
    Service {
        #[arg(long, default_value_t = 100)]
        parties: usize,
        /// Coordinates per update (a multiple of 10).
        #[arg(long, default_value_t = 100_000)]
        len: usize,
        #[arg(long, default_value_t = 3)]
        rounds: u32,
        /// Neighbours per party: a number (SecAgg+) or `all`.
        #[arg(long, default_value = "all")]
        neighbors: String,
        #[arg(long)]
        json: bool,
    },
    /// The exact noise sampler's rate at σ from 1 to 10⁶ next to opendp's,
    /// and one party's encode + noise + mask work on one task, against raw
    /// ChaCha20 keystream measured in the same run.
    Encoding {
        /// Coordinates in the update (and samples per σ).
        #[arg(long, default_value_t = 1_000_000)]
        len: usize,
        /// Noise standard deviation of the party's task, in integer units.
        #[arg(long, default_value_t = 1000.0)]
        sigma: f64,
        /// Pairwise masks in the party's task (SecAgg+ neighbours).
        #[arg(long, default_value_t = 7)]
        neighbors: usize,
        /// Print one JSON object.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand)]
enum PolicyCommand {
    /// Validate a policy and print what it implies: noise per party, γ, bits
    /// needed and ε after every round, before anything runs.
    Check {
        file: std::path::PathBuf,
        /// Print one JSON object.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand)]
enum BudgetCommand {
    /// Spent and remaining budget of every consortium, and every charge.
    Show {
        /// The coordinator's database.
        #[arg(long)]
        db: std::path::PathBuf,
        /// Print one JSON object.
        #[arg(long)]
        json: bool,
    },
}

#[derive(clap::Args)]
struct SecaggSimFlags {
    /// Number of parties.
    #[arg(long, default_value_t = 10)]
    parties: u32,
    /// Words per vector.
    #[arg(long, default_value_t = 1000)]
    len: usize,
    /// Fraction of parties that drop out.
    #[arg(long, default_value_t = 0.0)]
    dropout: f64,
    /// When dropouts go silent: advertise-keys, share-keys, masked-input,
    /// consistency-check, unmasking, or random.
    #[arg(long, default_value = "masked-input")]
    drop_phase: String,
    /// Neighbours per party (not counting itself): a number for a SecAgg+
    /// graph, `all` for the complete graph, or `auto` to choose from the
    /// party count, dropout rate and --corruption.
    #[arg(long, default_value = "all")]
    neighbors: String,
    /// Shamir threshold within each neighbourhood. Default: a majority of it
    /// (or the recommended value with --neighbors auto).
    #[arg(long)]
    threshold: Option<usize>,
    /// Tolerated fraction of corrupt parties, for --neighbors auto.
    #[arg(long, default_value_t = 0.05)]
    corruption: f64,
    /// Parties that may collude with the coordinator: the threshold must
    /// exceed it, and with --active 2·threshold must exceed the
    /// neighbourhood plus it.
    #[arg(long, default_value_t = 0)]
    colluding: usize,
    /// Words are taken mod 2^bits (8 to 32).
    #[arg(long, default_value_t = 32)]
    bits: u8,
    /// Run the consistency check (signed survivor lists).
    #[arg(long)]
    active: bool,
    /// Seed of everything random in the simulation.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Threads for the parties' work (default: every core). The
    /// coordinator always works on one.
    #[arg(long)]
    threads: Option<usize>,
    /// Print one JSON object instead of a table.
    #[arg(long)]
    json: bool,
}

fn parse_phase(s: &str) -> Result<DropPhase> {
    if s == "random" {
        return Ok(DropPhase::Random);
    }
    Phase::ALL
        .into_iter()
        .find(|p| p.name() == s)
        .map(DropPhase::At)
        .with_context(|| {
            format!(
                "--drop-phase must be one of advertise-keys, share-keys, masked-input, \
                 consistency-check, unmasking or random; got `{s}`"
            )
        })
}

fn parse_neighbours(s: &str) -> Result<Neighbours> {
    match s {
        "all" => Ok(Neighbours::All),
        "auto" => Ok(Neighbours::Auto),
        k => match k.parse::<u32>() {
            Ok(k) => Ok(Neighbours::Fixed(k)),
            Err(_) => bail!("--neighbors must be a number, `all` or `auto`; got `{k}`"),
        },
    }
}

fn secagg_sim(f: SecaggSimFlags) -> Result<()> {
    let args = SimArgs {
        parties: f.parties,
        len: f.len,
        dropout: f.dropout,
        drop_phase: parse_phase(&f.drop_phase)?,
        neighbours: parse_neighbours(&f.neighbors)?,
        threshold: f.threshold,
        corruption: f.corruption,
        max_colluding: f.colluding,
        bits: f.bits,
        active: f.active,
        seed: f.seed,
        threads: f
            .threads
            .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get())),
    };
    if args.threads == 0 {
        bail!("--threads must be at least 1");
    }
    let report = secagg_sim::run(&args).map_err(anyhow::Error::msg)?;
    if f.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        println!(
            "{} parties, {} words of {} bits, {} neighbours each ({}), threshold {}{}",
            report.parties,
            report.len,
            report.bits,
            report.neighbors,
            report.graph,
            report.threshold,
            if report.active { ", active" } else { "" }
        );
        println!(
            "dropped {} at {}; {} inputs in the sum; exact: {}",
            report.dropped, report.drop_phase, report.contributors, report.exact
        );
        println!("party threads              {:>10}", report.threads);
        println!(
            "raw mask keystream (ChaCha12) {:>8.2} GB/s  (ChaCha20: {:.2} GB/s)",
            report.raw_keystream_gb_per_s, report.raw_chacha20_gb_per_s
        );
        println!(
            "per party, all phases      {:>10.2} ms",
            report.client_ms_mean
        );
        println!(
            "per party, masking         {:>10.2} ms  ({:.2}x its keystream time)",
            report.client_masking_ms_mean, report.client_masking_vs_keystream
        );
        println!("coordinator, all phases    {:>10.2} ms", report.server_ms);
        println!(
            "coordinator, unmasking     {:>10.2} ms  ({:.2}x the time for {} keystream bytes)",
            report.server_unmask_ms,
            report.server_unmask_vs_keystream,
            report.keystream_bytes_server
        );
        println!("whole round, one process   {:>10.2} ms", report.wall_ms);
    }
    if !report.exact {
        bail!("the unmasked sum does not equal the plain sum of the contributors' inputs");
    }
    Ok(())
}

pub fn main() -> ExitCode {
    let cli = Cli::parse();
    if !cli.command.uses_network() {
        end_quietly_on_closed_pipe();
    }
    let result = match cli.command {
        Command::SecaggSim(f) => secagg_sim(f),
        Command::Demo(f) => demo_cmd::run(f),
        Command::Compare(f) => compare_cmd::run(f),
        Command::Audit { db, job, out } => audit_cmd::rerender(&db, &job, &out),
        Command::Report(ReportCommand::Verify { file, db }) => audit_cmd::verify(&file, &db),
        Command::Report(ReportCommand::Sign {
            file,
            db,
            key,
            reviewer,
            verdict,
            comment,
        }) => audit_cmd::sign(&file, &db, &key, &reviewer, &verdict, &comment),
        Command::VerifyLog { db } => audit_cmd::verify_log(&db),
        Command::Policy(PolicyCommand::Check { file, json }) => policy_cmd::check(&file, json),
        Command::Budget(BudgetCommand::Show { db, json }) => budget_cmd::show(&db, json),
        Command::Bench(BenchCommand::Encoding {
            len,
            sigma,
            neighbors,
            json,
        }) => bench_cmd::encoding(len, sigma, neighbors, json),
        Command::Bench(BenchCommand::Service {
            parties,
            len,
            rounds,
            neighbors,
            json,
        }) => bench_service::service(parties, len, rounds, &neighbors, json),
        Command::Data(DataCommand::Split(f)) => data_cmd::split(f),
        Command::Data(DataCommand::Partition(f)) => data_cmd::partition(f),
        Command::Data(DataCommand::Encoder(f)) => data_cmd::encoder(f),
        Command::Keygen(f) => service_cmd::keygen(f),
        Command::Serve(f) => service_cmd::serve(f),
        Command::Party(f) => service_cmd::party(f),
        Command::Job(c) => service_cmd::job(c),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
    }
}

impl Command {
    /// Commands that open sockets keep Rust's ignored SIGPIPE: a peer that
    /// goes away must be an error on that connection, never the end of a
    /// coordinator.
    fn uses_network(&self) -> bool {
        matches!(
            self,
            Command::Demo(_)
                | Command::Serve(_)
                | Command::Party(_)
                | Command::Job(_)
                | Command::Bench(BenchCommand::Service { .. })
        )
    }
}

/// `shroud budget show | head -1` ends quietly when `head` stops reading,
/// as Unix tools do, instead of panicking on the broken pipe.
fn end_quietly_on_closed_pipe() {
    #[cfg(unix)]
    // SAFETY: restoring the default action of one signal before any other
    // thread exists; no handler runs Rust code.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
}
