//! Command-line flags → [`Config`] (DESIGN §2, §9).
//!
//! Parsing runs in three steps, so each can be tested on its own:
//! 1. [`fold_list_flags`] turns the original project's `--hosts h1 h2 --ports p1 p2`
//!    (several values after one flag, which getopts cannot take) into one
//!    comma-joined value per flag;
//! 2. getopts reads the flags into [`Flags`], plain strings with no rules applied;
//! 3. [`validate`], a pure function, checks every rule and builds the [`Config`].
//!    Each broken rule is one [`ConfigError`] line that starts with the flag's name.
//!
//! The one check that touches the file system, that `--cluster-key-file` is
//! readable, runs after `validate` in [`parse_args`].

use crate::client::Limits;
use crate::protocol::types::ReplicaId;
use crate::storage::FsyncPolicy;
use getopts::{Fail, Matches, Options};
use std::collections::BTreeMap;
use std::fmt;
use std::net::Ipv6Addr;
use std::num::IntErrorKind;
use std::path::PathBuf;

/// Most replicas in one cluster: ids are `u8` and 0 is not an id.
const PEERS_MAX: usize = u8::MAX as usize;
/// DESIGN §8 caps keys at 256 bytes; `--max-key-bytes` may only lower it.
const KEY_BYTES_CAP: u64 = 256;
/// Largest `--max-value-bytes`: a value travels whole in one peer message
/// and one log batch (`protocol::BATCH_BYTES_MAX`), far below the frame limit.
const VALUE_BYTES_CAP: u64 = crate::protocol::BATCH_BYTES_MAX as u64;
/// Bytes a command line holds besides its key and value. The longest is
/// `CAS key <version> value`: 4 + 1 + 20 (a u64's digits) + 1 = 26, rounded up.
const COMMAND_BYTES_OVERHEAD: u64 = 32;
/// Default `--heartbeat-ms`.
const HEARTBEAT_MS_DEFAULT: u64 = 20;
/// Default `--election-timeout-ms`: several heartbeats, so one lost heartbeat
/// does not start an election.
const ELECTION_TIMEOUT_MS_DEFAULT: u64 = 100;
/// Heartbeats that fit in the shortest election timeout.
const HEARTBEATS_PER_ELECTION_TIMEOUT_MIN: u64 = 3;
const _: () = assert!(
    HEARTBEAT_MS_DEFAULT * HEARTBEATS_PER_ELECTION_TIMEOUT_MIN <= ELECTION_TIMEOUT_MS_DEFAULT
);
/// Default `--request-timeout-ms`: long enough to ride out one election.
const REQUEST_TIMEOUT_MS_DEFAULT: u64 = 3000;
const _: () = assert!(ELECTION_TIMEOUT_MS_DEFAULT <= REQUEST_TIMEOUT_MS_DEFAULT);
/// Default `--max-clients`.
const CLIENTS_MAX_DEFAULT: u64 = 1024;
/// Default `--snapshot-every-entries`. The in-memory log holds the entries
/// since the last snapshot (about 250 bytes each with 100-byte values), so
/// this bounds it: 50,000 keep it near a tenth of the raw size of a million
/// keys, where 100,000 measured about 10 MB more per replica.
const SNAPSHOT_EVERY_ENTRIES_DEFAULT: u64 = 50_000;
/// Default `--wal-segment-bytes` (64 MiB).
const WAL_SEGMENT_BYTES_DEFAULT: u64 = 64 << 20;
/// Smallest `--wal-segment-bytes`: one page, so a segment holds some records.
const WAL_SEGMENT_BYTES_MIN: u64 = 4096;
/// Flags that take a whole list of values, as the original project's README shows.
const LIST_FLAGS: [&str; 2] = ["--hosts", "--ports"];

/// A validated replica configuration.
#[derive(Clone, Debug)]
pub struct Config {
    /// This replica's 1-based position in `peers`.
    pub id: ReplicaId,
    /// Every replica's `host:port`, as given, in id order. The digest covers this.
    pub peers: Vec<String>,
    /// `--peer-dial ID=HOST:PORT`: where this replica dials peer ID instead.
    pub peer_dial: BTreeMap<ReplicaId, String>,
    /// `--data-dir` (default `./data/<id>`).
    pub data_dir: PathBuf,
    /// NW.
    pub write_quorum: usize,
    /// NR.
    pub read_quorum: usize,
    /// `--fsync always|never`.
    pub fsync: FsyncPolicy,
    /// `--heartbeat-ms`.
    pub heartbeat_ms: u64,
    /// `--election-timeout-ms`.
    pub election_timeout_ms: u64,
    /// `--request-timeout-ms`.
    pub request_timeout_ms: u64,
    /// `--seed`: the protocol RNG seed (random when absent).
    pub seed: Option<u64>,
    /// Line, key and value limits.
    pub limits: Limits,
    /// `--max-clients`.
    pub clients_max: usize,
    /// `--idle-timeout-ms` (0 = never).
    pub idle_timeout_ms: u64,
    /// `--cluster-key-file`.
    pub cluster_key_file: Option<PathBuf>,
    /// `--snapshot-every-entries`: applied entries between snapshots (>= 1).
    pub snapshot_every_entries: u64,
    /// `--wal-segment-bytes`: size at which the WAL starts a new segment (>= 4096).
    pub wal_segment_bytes: u64,
}

/// What the command line asked for.
#[derive(Debug)]
pub enum Parsed {
    /// Run a replica.
    Run(Box<Config>),
    /// Print this usage text and exit 0.
    Help(String),
}

/// One line naming the flag and the rule it broke.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError(pub String);

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Result alias for configuration.
pub type Result<T> = std::result::Result<T, ConfigError>;

/// The flags as given, before any rule is checked. `None` means "not given".
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Flags {
    /// `--id`.
    pub id: Option<String>,
    /// `--peers`.
    pub peers: Option<String>,
    /// `--hosts`, comma-joined.
    pub hosts: Option<String>,
    /// `--ports`, comma-joined.
    pub ports: Option<String>,
    /// Every `--peer-dial`, in order.
    pub peer_dial: Vec<String>,
    /// `--data-dir`.
    pub data_dir: Option<String>,
    /// `--write-quorum`.
    pub write_quorum: Option<String>,
    /// `--read-quorum`.
    pub read_quorum: Option<String>,
    /// `--fsync`.
    pub fsync: Option<String>,
    /// `--heartbeat-ms`.
    pub heartbeat_ms: Option<String>,
    /// `--election-timeout-ms`.
    pub election_timeout_ms: Option<String>,
    /// `--request-timeout-ms`.
    pub request_timeout_ms: Option<String>,
    /// `--seed`.
    pub seed: Option<String>,
    /// `--max-line-bytes`.
    pub max_line_bytes: Option<String>,
    /// `--max-key-bytes`.
    pub max_key_bytes: Option<String>,
    /// `--max-value-bytes`.
    pub max_value_bytes: Option<String>,
    /// `--max-clients`.
    pub max_clients: Option<String>,
    /// `--idle-timeout-ms`.
    pub idle_timeout_ms: Option<String>,
    /// `--cluster-key-file`.
    pub cluster_key_file: Option<String>,
    /// `--snapshot-every-entries`.
    pub snapshot_every_entries: Option<String>,
    /// `--wal-segment-bytes`.
    pub wal_segment_bytes: Option<String>,
}

/// Parses the arguments after the program name. Every error is one line that
/// starts with the offending flag (or argument) and ends with `try --help`.
pub fn parse_args(args: &[String]) -> Result<Parsed> {
    parse_checked(args).map_err(|e| ConfigError(format!("{}; try --help", e.0)))
}

fn parse_checked(args: &[String]) -> Result<Parsed> {
    let options = options();
    // `--help` wins over any other mistake on the line: it is how one learns the flags.
    let flags_end = args.iter().position(|arg| arg == "--").unwrap_or(args.len());
    if args[..flags_end].iter().any(|arg| arg == "--help" || arg == "-h") {
        return Ok(Parsed::Help(usage(&options)));
    }
    let folded = fold_list_flags(args);
    let matches = options.parse(&folded).map_err(getopts_error)?;
    check_values_present(&folded)?;
    if let Some(arg) = matches.free.first() {
        return Err(error(format!("{}: unexpected argument (flags are --name value)", show(arg))));
    }
    let config = validate(&flags_from(&matches))?;
    if let Some(path) = &config.cluster_key_file {
        check_cluster_key_file(path)?;
    }
    Ok(Parsed::Run(Box::new(config)))
}

/// Every flag: getopts reads these, and `--help` prints them with their defaults.
fn options() -> Options {
    let d = Limits::default();
    let mut o = Options::new();
    o.optflag("h", "help", "print this text and exit");
    o.optopt("", "id", "required: this replica's 1-based position in the member list", "K");
    o.optopt("", "peers", "the members, in id order (or --hosts with --ports)", "H1:P1,H2:P2,..");
    o.optopt("", "hosts", "member hosts in id order, space- or comma-separated", "H1 H2 ..");
    o.optopt("", "ports", "member ports in the order of --hosts", "P1 P2 ..");
    o.optmulti("", "peer-dial", "dial peer ID at this address instead (repeatable)", "ID=H:P");
    o.optopt("", "data-dir", "where the WAL and snapshots live (default ./data/<id>)", "PATH");
    o.optopt("", "write-quorum", "votes that commit a write, a majority (default N/2+1)", "NW");
    o.optopt("", "read-quorum", "replicas a read asks, NR+NW > N (default N-NW+1)", "NR");
    o.optopt("", "fsync", "fsync before acknowledging: always|never (default always)", "WHEN");
    let heartbeat = format!("leader heartbeat interval in ms (default {HEARTBEAT_MS_DEFAULT})");
    o.optopt("", "heartbeat-ms", &heartbeat, "MS");
    let election =
        format!("election timeout in ms, >= 3 heartbeats (default {ELECTION_TIMEOUT_MS_DEFAULT})");
    o.optopt("", "election-timeout-ms", &election, "MS");
    let request = format!(
        "client request timeout in ms, >= election timeout (default {REQUEST_TIMEOUT_MS_DEFAULT})"
    );
    o.optopt("", "request-timeout-ms", &request, "MS");
    o.optopt("", "seed", "protocol RNG seed (default: random, logged at start)", "U64");
    let line = format!("longest client line (default {})", d.line_bytes_max);
    o.optopt("", "max-line-bytes", &line, "BYTES");
    let key = format!("longest key, 1..={KEY_BYTES_CAP} (default {})", d.key_bytes_max);
    o.optopt("", "max-key-bytes", &key, "BYTES");
    o.optopt(
        "",
        "max-value-bytes",
        &format!("longest value, at most {VALUE_BYTES_CAP} (default {})", d.value_bytes_max),
        "BYTES",
    );
    let clients = format!("client connections at once (default {CLIENTS_MAX_DEFAULT})");
    o.optopt("", "max-clients", &clients, "N");
    o.optopt("", "idle-timeout-ms", "close idle client connections (default 0 = never)", "MS");
    o.optopt(
        "",
        "cluster-key-file",
        "shared key peers prove in the handshake (default none)",
        "PATH",
    );
    let snap =
        format!("applied entries between snapshots (default {SNAPSHOT_EVERY_ENTRIES_DEFAULT})");
    o.optopt("", "snapshot-every-entries", &snap, "N");
    let wal = format!("WAL segment size (default {WAL_SEGMENT_BYTES_DEFAULT} = 64 MiB)");
    o.optopt("", "wal-segment-bytes", &wal, "BYTES");
    o
}

/// The text `--help` prints: the command shape, then every flag with its default.
fn usage(options: &Options) -> String {
    let brief =
        "Usage: quorumkv --id K (--peers H1:P1,H2:P2,.. | --hosts H1 H2 .. --ports P1 P2 ..) \
                 [flags]\n\nRuns one replica of a quorumkv cluster. Every replica is given the \
                 same member list, in the same order; --id picks this replica's place in it.";
    options.usage(brief)
}

/// Folds the values after `--hosts` or `--ports`, up to the next argument that
/// starts with `--`, into one comma-joined value, so getopts sees one value per
/// flag. `--hosts a b c` and `--hosts a,b,c` both become `--hosts a,b,c`.
/// Arguments after a `--` terminator are left alone.
pub fn fold_list_flags(args: &[String]) -> Vec<String> {
    let mut folded = Vec::with_capacity(args.len());
    let mut rest = args.iter().peekable();
    while let Some(arg) = rest.next() {
        folded.push(arg.clone());
        if arg == "--" {
            folded.extend(rest.cloned());
            break;
        }
        if LIST_FLAGS.contains(&arg.as_str()) {
            let mut values = Vec::new();
            while let Some(value) = rest.next_if(|v| !v.starts_with("--")) {
                values.push(value.as_str());
            }
            if !values.is_empty() {
                folded.push(values.join(","));
            }
        }
    }
    folded
}

/// getopts takes the next argument as a flag's value even when it is another
/// flag (`--id --peers a:1` gives `--id` the value `--peers`); refuse that.
fn check_values_present(args: &[String]) -> Result<()> {
    for pair in args.windows(2) {
        let (flag, next) = (&pair[0], &pair[1]);
        if flag == "--" {
            break;
        }
        let takes_value = flag.starts_with("--") && !flag.contains('=') && flag != "--help";
        if takes_value && next.starts_with("--") {
            return Err(error(format!("{flag}: missing value (found {})", show(next))));
        }
    }
    Ok(())
}

fn getopts_error(fail: Fail) -> ConfigError {
    let dashed = |name: &str| {
        if name.chars().count() == 1 {
            format!("-{name}")
        } else {
            format!("--{name}")
        }
    };
    error(match fail {
        Fail::ArgumentMissing(name) => format!("{}: missing value", dashed(&name)),
        Fail::UnrecognizedOption(name) => format!("{}: unknown flag", dashed(&show(&name))),
        Fail::OptionMissing(name) => format!("{}: required", dashed(&name)),
        Fail::OptionDuplicated(name) => format!("{}: given more than once", dashed(&name)),
        Fail::UnexpectedArgument(name) => format!("{}: takes no value", dashed(&name)),
    })
}

fn flags_from(m: &Matches) -> Flags {
    let s = |name: &str| m.opt_str(name);
    Flags {
        id: s("id"),
        peers: s("peers"),
        hosts: s("hosts"),
        ports: s("ports"),
        peer_dial: m.opt_strs("peer-dial"),
        data_dir: s("data-dir"),
        write_quorum: s("write-quorum"),
        read_quorum: s("read-quorum"),
        fsync: s("fsync"),
        heartbeat_ms: s("heartbeat-ms"),
        election_timeout_ms: s("election-timeout-ms"),
        request_timeout_ms: s("request-timeout-ms"),
        seed: s("seed"),
        max_line_bytes: s("max-line-bytes"),
        max_key_bytes: s("max-key-bytes"),
        max_value_bytes: s("max-value-bytes"),
        max_clients: s("max-clients"),
        idle_timeout_ms: s("idle-timeout-ms"),
        cluster_key_file: s("cluster-key-file"),
        snapshot_every_entries: s("snapshot-every-entries"),
        wal_segment_bytes: s("wal-segment-bytes"),
    }
}

/// Checks every rule on `flags` and builds the [`Config`], filling defaults.
/// Pure: it reads no files (see [`parse_args`] for `--cluster-key-file`).
pub fn validate(flags: &Flags) -> Result<Config> {
    let id = number("--id", flags.id.as_deref().ok_or_else(|| error("--id: required"))?)?;
    let peers = peer_list(flags)?;
    let id = replica_id(id, peers.len())?;
    let (write_quorum, read_quorum) = quorums(flags, peers.len())?;
    let (heartbeat_ms, election_timeout_ms, request_timeout_ms) = timeouts(flags)?;
    let clients_max = at_least("--max-clients", &flags.max_clients, CLIENTS_MAX_DEFAULT, 1)?;
    let snapshot_every_entries = at_least(
        "--snapshot-every-entries",
        &flags.snapshot_every_entries,
        SNAPSHOT_EVERY_ENTRIES_DEFAULT,
        1,
    )?;
    let wal_segment_bytes = at_least(
        "--wal-segment-bytes",
        &flags.wal_segment_bytes,
        WAL_SEGMENT_BYTES_DEFAULT,
        WAL_SEGMENT_BYTES_MIN,
    )?;
    Ok(Config {
        peer_dial: peer_dial(&flags.peer_dial, id, peers.len())?,
        data_dir: data_dir(flags.data_dir.as_deref(), id)?,
        fsync: fsync(flags.fsync.as_deref())?,
        seed: flags.seed.as_deref().map(|v| number("--seed", v)).transpose()?,
        limits: limits(flags)?,
        clients_max: to_usize("--max-clients", clients_max)?,
        idle_timeout_ms: number_or("--idle-timeout-ms", &flags.idle_timeout_ms, 0)?,
        cluster_key_file: path("--cluster-key-file", flags.cluster_key_file.as_deref())?,
        id,
        peers,
        write_quorum,
        read_quorum,
        heartbeat_ms,
        election_timeout_ms,
        request_timeout_ms,
        snapshot_every_entries,
        wal_segment_bytes,
    })
}

/// The member list from `--peers`, or from `--hosts` zipped with `--ports`;
/// exactly one form must be given. Checks each address and refuses duplicates.
fn peer_list(flags: &Flags) -> Result<Vec<String>> {
    let (peers, source) = match (&flags.peers, &flags.hosts, &flags.ports) {
        (Some(peers), None, None) => (split_list("--peers", peers)?, "--peers"),
        (None, Some(hosts), Some(ports)) => (zip_hosts_ports(hosts, ports)?, "--hosts/--ports"),
        (Some(_), _, _) => {
            return Err(error("--peers: give either --peers or --hosts with --ports, not both"))
        }
        (None, Some(_), None) => return Err(error("--ports: required with --hosts")),
        (None, None, Some(_)) => return Err(error("--hosts: required with --ports")),
        (None, None, None) => {
            return Err(error("--peers: required (or --hosts with --ports)"));
        }
    };
    if peers.len() > PEERS_MAX {
        let n = peers.len();
        return Err(error(format!("{source}: {n} members, at most {PEERS_MAX} (ids are u8)")));
    }
    check_members(source, &peers)?;
    Ok(peers)
}

/// Splits a comma-separated list; an empty member (`a:1,,b:2`) is an error.
fn split_list(flag: &str, value: &str) -> Result<Vec<String>> {
    let items: Vec<String> = value.split(',').map(|item| item.trim().to_string()).collect();
    match items.iter().position(|item| item.is_empty()) {
        Some(i) => Err(error(format!("{flag} {}: member {} is empty", show(value), i + 1))),
        None => Ok(items),
    }
}

/// Pairs hosts with ports into `host:port`, bracketing bare IPv6 hosts (`::1`).
fn zip_hosts_ports(hosts: &str, ports: &str) -> Result<Vec<String>> {
    let hosts = split_list("--hosts", hosts)?;
    let ports = split_list("--ports", ports)?;
    if hosts.len() != ports.len() {
        let (h, p) = (hosts.len(), ports.len());
        return Err(error(format!("--hosts: {h} hosts but --ports has {p} ports")));
    }
    let address = |(host, port): (&String, &String)| {
        if host.contains(':') && !host.starts_with('[') {
            format!("[{host}]:{port}")
        } else {
            format!("{host}:{port}")
        }
    };
    Ok(hosts.iter().zip(&ports).map(address).collect())
}

/// Every member must parse as an address, and no two may be the same.
fn check_members(source: &str, peers: &[String]) -> Result<()> {
    let mut seen: BTreeMap<(String, u16), usize> = BTreeMap::new();
    for (i, peer) in peers.iter().enumerate() {
        let id = i + 1;
        let key = parse_address(peer)
            .map_err(|rule| error(format!("{source} {} (id {id}): {rule}", show(peer))))?;
        if let Some(first) = seen.insert(key, id) {
            let peer = show(peer);
            return Err(error(format!(
                "{source}: duplicate address {peer} (ids {first} and {id})"
            )));
        }
    }
    Ok(())
}

/// Splits `host:port` (or `[v6]:port`) and returns the host in lower case with
/// the port as a number, so `A:080` and `a:80` compare equal.
fn parse_address(address: &str) -> std::result::Result<(String, u16), &'static str> {
    let (host, port) = address.rsplit_once(':').ok_or("must be HOST:PORT")?;
    let port = port.parse::<u16>().ok().filter(|&p| p != 0);
    let port = port.ok_or("port must be a number in 1..=65535")?;
    check_host(host)?;
    Ok((host.to_ascii_lowercase(), port))
}

fn check_host(host: &str) -> std::result::Result<(), &'static str> {
    if host.is_empty() {
        return Err("host must not be empty");
    }
    if let Some(inner) = host.strip_prefix('[') {
        let ip = inner.strip_suffix(']').ok_or("IPv6 host is missing its ']'")?;
        return ip.parse::<Ipv6Addr>().map(|_| ()).map_err(|_| "not an IPv6 address in [ ]");
    }
    if host.contains(':') {
        return Err("an IPv6 host needs brackets, e.g. [::1]:9000");
    }
    if host.contains(|c: char| c.is_whitespace() || c.is_control() || "[]/".contains(c)) {
        return Err("host holds a character no host name has");
    }
    Ok(())
}

fn replica_id(id: u64, n: usize) -> Result<ReplicaId> {
    let in_range = id >= 1 && id <= n as u64;
    match u8::try_from(id) {
        Ok(id) if in_range => Ok(ReplicaId(id)),
        _ => Err(error(format!("--id {id}: must be in 1..={n} (N={n})"))),
    }
}

/// NW (default N/2+1) must be a majority, so two writes always share a voter;
/// NR (default N-NW+1) must overlap every write quorum: NR+NW > N.
fn quorums(flags: &Flags, n: usize) -> Result<(usize, usize)> {
    let n64 = n as u64;
    let write = number_or("--write-quorum", &flags.write_quorum, n64 / 2 + 1)?;
    check_quorum_size("--write-quorum", write, n64)?;
    if write * 2 <= n64 {
        let half = n64 / 2;
        return Err(error(format!("--write-quorum {write}: must be > N/2 = {half} (N={n})")));
    }
    let read = number_or("--read-quorum", &flags.read_quorum, n64 - write + 1)?;
    check_quorum_size("--read-quorum", read, n64)?;
    if read + write <= n64 {
        let rule = format!("NR+NW must be > N ({read}+{write} <= {n})");
        return Err(error(format!("--read-quorum {read}: {rule}")));
    }
    // Both are at most n, a usize, so the casts are exact.
    Ok((write as usize, read as usize))
}

fn check_quorum_size(flag: &str, quorum: u64, n: u64) -> Result<()> {
    if quorum == 0 {
        return Err(error(format!("{flag} 0: must be >= 1")));
    }
    if quorum > n {
        return Err(error(format!("{flag} {quorum}: must be <= N = {n}")));
    }
    Ok(())
}

/// Heartbeat, election and request timeouts in ms. A follower must see several
/// heartbeats per election timeout, and a client must wait out one election.
fn timeouts(flags: &Flags) -> Result<(u64, u64, u64)> {
    let heartbeat = at_least("--heartbeat-ms", &flags.heartbeat_ms, HEARTBEAT_MS_DEFAULT, 1)?;
    let election = number_or(
        "--election-timeout-ms",
        &flags.election_timeout_ms,
        ELECTION_TIMEOUT_MS_DEFAULT,
    )?;
    let election_min = heartbeat.saturating_mul(HEARTBEATS_PER_ELECTION_TIMEOUT_MIN);
    if election < election_min {
        let k = HEARTBEATS_PER_ELECTION_TIMEOUT_MIN;
        let rule = format!("must be >= {k} * --heartbeat-ms = {election_min}");
        return Err(error(format!("--election-timeout-ms {election}: {rule}")));
    }
    let request =
        number_or("--request-timeout-ms", &flags.request_timeout_ms, REQUEST_TIMEOUT_MS_DEFAULT)?;
    if request < election {
        let rule = format!("must be >= --election-timeout-ms = {election}");
        return Err(error(format!("--request-timeout-ms {request}: {rule}")));
    }
    Ok((heartbeat, election, request))
}

/// Line, key and value limits; the longest command must fit in one line.
fn limits(flags: &Flags) -> Result<Limits> {
    let d = Limits::default();
    let key = number_or("--max-key-bytes", &flags.max_key_bytes, d.key_bytes_max as u64)?;
    if !(1..=KEY_BYTES_CAP).contains(&key) {
        return Err(error(format!("--max-key-bytes {key}: must be in 1..={KEY_BYTES_CAP}")));
    }
    let value = number_or("--max-value-bytes", &flags.max_value_bytes, d.value_bytes_max as u64)?;
    if value > VALUE_BYTES_CAP {
        let why = "a value must fit in one peer message";
        return Err(error(format!(
            "--max-value-bytes {value}: must be at most {VALUE_BYTES_CAP} ({why})"
        )));
    }
    let line = number_or("--max-line-bytes", &flags.max_line_bytes, d.line_bytes_max as u64)?;
    let line_min = key.saturating_add(value).saturating_add(COMMAND_BYTES_OVERHEAD);
    if line < line_min {
        let sum = format!("--max-key-bytes + --max-value-bytes + {COMMAND_BYTES_OVERHEAD}");
        return Err(error(format!("--max-line-bytes {line}: must be >= {sum} = {line_min}")));
    }
    Ok(Limits {
        line_bytes_max: to_usize("--max-line-bytes", line)?,
        key_bytes_max: to_usize("--max-key-bytes", key)?,
        value_bytes_max: to_usize("--max-value-bytes", value)?,
    })
}

/// Each `--peer-dial ID=HOST:PORT` names another member, at most once.
fn peer_dial(values: &[String], own: ReplicaId, n: usize) -> Result<BTreeMap<ReplicaId, String>> {
    let mut dial = BTreeMap::new();
    for value in values {
        let (id, address) = dial_entry(value, own, n)?;
        if dial.insert(id, address).is_some() {
            let value = show(value);
            return Err(error(format!("--peer-dial {value}: peer {} is given twice", id.0)));
        }
    }
    Ok(dial)
}

fn dial_entry(value: &str, own: ReplicaId, n: usize) -> Result<(ReplicaId, String)> {
    let bad = |rule: String| error(format!("--peer-dial {}: {rule}", show(value)));
    let (id, address) = value.split_once('=').ok_or_else(|| bad("must be ID=HOST:PORT".into()))?;
    let id = id.parse::<u8>().ok().filter(|&id| id >= 1 && usize::from(id) <= n);
    let id = id.ok_or_else(|| bad(format!("ID must be a member id in 1..={n}")))?;
    if id == own.0 {
        return Err(bad(format!("ID {id} is this replica's own --id")));
    }
    parse_address(address).map_err(|rule| bad(rule.into()))?;
    Ok((ReplicaId(id), address.to_string()))
}

fn fsync(value: Option<&str>) -> Result<FsyncPolicy> {
    match value {
        None | Some("always") => Ok(FsyncPolicy::Always),
        Some("never") => Ok(FsyncPolicy::Never),
        Some(other) => Err(error(format!("--fsync {}: must be always or never", show(other)))),
    }
}

fn data_dir(value: Option<&str>, id: ReplicaId) -> Result<PathBuf> {
    match path("--data-dir", value)? {
        Some(dir) => Ok(dir),
        None => Ok(PathBuf::from(format!("./data/{}", id.0))),
    }
}

fn path(flag: &str, value: Option<&str>) -> Result<Option<PathBuf>> {
    match value {
        Some("") => Err(error(format!("{flag}: must not be empty"))),
        other => Ok(other.map(PathBuf::from)),
    }
}

/// The key file must exist, be a readable regular file and not be empty: an
/// empty key would let any peer that knows the protocol join.
fn check_cluster_key_file(path: &std::path::Path) -> Result<()> {
    let bad = |why: String| error(format!("--cluster-key-file {}: {why}", show(path.display())));
    let file = std::fs::File::open(path).map_err(|e| bad(format!("cannot read: {e}")))?;
    let meta = file.metadata().map_err(|e| bad(format!("cannot read: {e}")))?;
    if !meta.is_file() {
        return Err(bad("not a regular file".into()));
    }
    if meta.len() == 0 {
        return Err(bad("is empty".into()));
    }
    Ok(())
}

/// A non-negative integer; the message says whether it was negative, too
/// large or not a number at all.
fn number(flag: &str, value: &str) -> Result<u64> {
    value.parse::<u64>().map_err(|e| {
        let negative = value.strip_prefix('-').is_some_and(|digits| digits.parse::<u64>().is_ok());
        let rule = match e.kind() {
            _ if negative => "must not be negative".to_string(),
            IntErrorKind::PosOverflow => format!("too large (max {})", u64::MAX),
            _ => "not a number".to_string(),
        };
        error(format!("{flag} {}: {rule}", show(value)))
    })
}

fn number_or(flag: &str, value: &Option<String>, default: u64) -> Result<u64> {
    value.as_deref().map_or(Ok(default), |v| number(flag, v))
}

fn at_least(flag: &str, value: &Option<String>, default: u64, min: u64) -> Result<u64> {
    let n = number_or(flag, value, default)?;
    if n < min {
        return Err(error(format!("{flag} {n}: must be >= {min}")));
    }
    Ok(n)
}

fn to_usize(flag: &str, n: u64) -> Result<usize> {
    usize::try_from(n).map_err(|_| error(format!("{flag} {n}: too large for this machine")))
}

/// Escapes a user-given value so the message stays on one line.
fn show(value: impl fmt::Display) -> String {
    value.to_string().escape_debug().to_string()
}

fn error(message: impl Into<String>) -> ConfigError {
    ConfigError(message.into())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn argv(line: &str) -> Vec<String> {
        line.split_whitespace().map(String::from).collect()
    }

    fn run(line: &str) -> Config {
        match parse_args(&argv(line)) {
            Ok(Parsed::Run(config)) => *config,
            other => panic!("{line:?} gave {other:?}"),
        }
    }

    fn fails(line: &str) -> String {
        match parse_args(&argv(line)) {
            Err(ConfigError(message)) => message,
            other => panic!("{line:?} should fail but gave {other:?}"),
        }
    }

    fn three() -> Flags {
        Flags { id: Some("1".into()), peers: Some("a:1,b:2,c:3".into()), ..Flags::default() }
    }

    #[test]
    fn bad_command_lines_fail_naming_the_flag() {
        let p3 = "--peers a:1,b:2,c:3";
        let cases: Vec<(String, &str)> = vec![
            (format!("--id 1 {p3} --bogus 3"), "--bogus"),
            (format!("--id 1 {p3} --seed"), "--seed"),
            (format!("--id 1 {p3} stray"), "stray"),
            (format!("--id x {p3}"), "--id"),
            (format!("--id 1 {p3} --heartbeat-ms -5"), "--heartbeat-ms"),
            (p3.to_string(), "--id"),
            (format!("--id 0 {p3}"), "--id"),
            (format!("--id 4 {p3}"), "--id"),
            ("--id 1 --peers a:1,b,c:3".to_string(), "--peers"),
            ("--id 1 --peers a:1,b:70000,c:3".to_string(), "--peers"),
            ("--id 1 --peers a:1,:2,c:3".to_string(), "--peers"),
            ("--id 1 --peers a:1,b:2,a:1".to_string(), "--peers"),
            (format!("--id 1 {p3} --write-quorum 1"), "--write-quorum"),
            (format!("--id 1 {p3} --write-quorum 4"), "--write-quorum"),
            (format!("--id 1 {p3} --write-quorum 0"), "--write-quorum"),
            (format!("--id 1 {p3} --read-quorum 1"), "--read-quorum"),
            (format!("--id 1 {p3} --read-quorum 4"), "--read-quorum"),
            (format!("--id 1 {p3} --read-quorum 0"), "--read-quorum"),
            (format!("--id 1 {p3} --fsync sometimes"), "--fsync"),
            (format!("--id 1 {p3} --heartbeat-ms 0"), "--heartbeat-ms"),
            (format!("--id 1 {p3} --election-timeout-ms 59"), "--election-timeout-ms"),
            (format!("--id 1 {p3} --request-timeout-ms 99"), "--request-timeout-ms"),
            (format!("--id 1 {p3} --max-key-bytes 0"), "--max-key-bytes"),
            (format!("--id 1 {p3} --max-key-bytes 257"), "--max-key-bytes"),
            (format!("--id 1 {p3} --max-line-bytes 1000"), "--max-line-bytes"),
            (format!("--id 1 {p3} --max-value-bytes 4194305"), "--max-value-bytes"),
            (format!("--id 1 {p3} --max-clients 0"), "--max-clients"),
            (format!("--id 1 {p3} --snapshot-every-entries 0"), "--snapshot-every-entries"),
            (format!("--id 1 {p3} --wal-segment-bytes 4095"), "--wal-segment-bytes"),
            (format!("--id 1 {p3} --peer-dial x=h:1"), "--peer-dial"),
            (format!("--id 1 {p3} --peer-dial 4=h:1"), "--peer-dial"),
            (format!("--id 1 {p3} --peer-dial 1=h:1"), "--peer-dial"),
            (format!("--id 1 {p3} --peer-dial 2=h"), "--peer-dial"),
            (format!("--id 1 {p3} --peer-dial 2"), "--peer-dial"),
            (format!("--id 1 {p3} --hosts a b c --ports 1 2 3"), "--peers"),
            ("--id 1 --hosts a b c --ports 1 2".to_string(), "--hosts"),
            ("--id 1 --hosts a b c".to_string(), "--ports"),
            ("--id 1".to_string(), "--peers"),
            (format!("--id 1 --id 2 {p3}"), "--id"),
            (format!("--id {p3}"), "--id"),
            (
                format!("--id 1 {p3} --cluster-key-file /nonexistent/quorumkv.key"),
                "--cluster-key-file",
            ),
        ];
        for (line, flag) in &cases {
            let message = fails(line);
            assert!(message.contains(flag), "{line:?}: {message:?} does not name {flag}");
            assert!(!message.contains('\n'), "{line:?}: {message:?} is not one line");
            assert!(message.ends_with("try --help"), "{line:?}: {message:?}");
        }
    }

    #[test]
    fn messages_start_with_the_flag_and_state_the_rule() {
        let p3 = "--peers a:1,b:2,c:3";
        let wq = fails(&format!("--id 1 {p3} --write-quorum 1"));
        assert_eq!(wq, "--write-quorum 1: must be > N/2 = 1 (N=3); try --help");
        let rq = fails(&format!("--id 1 {p3} --read-quorum 1"));
        assert_eq!(rq, "--read-quorum 1: NR+NW must be > N (1+2 <= 3); try --help");
        let id = fails(&format!("--id 4 {p3}"));
        assert_eq!(id, "--id 4: must be in 1..=3 (N=3); try --help");
        let negative = fails(&format!("--id 1 {p3} --heartbeat-ms -5"));
        assert!(negative.starts_with("--heartbeat-ms -5: must not be negative"), "{negative}");
        let dup = fails("--id 1 --peers a:1,b:2,A:01");
        assert!(dup.starts_with("--peers: duplicate address A:01 (ids 1 and 3)"), "{dup}");
    }

    #[test]
    fn defaults_for_three_peers() {
        let c = run("--id 2 --peers a:1,b:2,c:3");
        assert_eq!(c.id, ReplicaId(2));
        assert_eq!((c.write_quorum, c.read_quorum), (2, 2));
        assert_eq!(c.data_dir, PathBuf::from("./data/2"));
        assert_eq!(c.fsync, FsyncPolicy::Always);
        assert_eq!((c.heartbeat_ms, c.election_timeout_ms, c.request_timeout_ms), (20, 100, 3000));
        assert_eq!(c.seed, None);
        assert_eq!(c.limits, Limits::default());
        assert_eq!((c.clients_max, c.idle_timeout_ms), (1024, 0));
        assert_eq!(c.cluster_key_file, None);
        assert!(c.peer_dial.is_empty());
        assert_eq!((c.snapshot_every_entries, c.wal_segment_bytes), (50_000, 64 << 20));
    }

    #[test]
    fn defaults_for_five_peers() {
        let c = run("--id 5 --peers a:1,b:2,c:3,d:4,e:5");
        assert_eq!((c.write_quorum, c.read_quorum), (3, 3));
    }

    #[test]
    fn default_read_quorum_follows_a_custom_write_quorum() {
        let c = run("--id 1 --peers a:1,b:2,c:3,d:4,e:5 --write-quorum 4");
        assert_eq!((c.write_quorum, c.read_quorum), (4, 2));
    }

    #[test]
    fn custom_quorums_with_five_peers_are_accepted() {
        let c = run("--id 1 --peers a:1,b:2,c:3,d:4,e:5 --write-quorum 4 --read-quorum 2");
        assert_eq!((c.write_quorum, c.read_quorum), (4, 2));
    }

    #[test]
    fn one_replica_is_a_cluster() {
        let c = run("--id 1 --peers localhost:9000");
        assert_eq!((c.write_quorum, c.read_quorum), (1, 1));
    }

    #[test]
    fn hosts_and_ports_forms_give_the_same_peers_as_peers() {
        let expected = run("--id 1 --peers a:1,b:2,c:3").peers;
        assert_eq!(run("--id 1 --hosts a b c --ports 1 2 3").peers, expected);
        assert_eq!(run("--id 1 --hosts a,b,c --ports 1,2,3").peers, expected);
        assert_eq!(run("--ports 1 2 3 --hosts a b c --id 1").peers, expected);
        assert_eq!(run("--id 1 --hosts=a,b,c --ports=1,2,3").peers, expected);
    }

    #[test]
    fn the_original_readme_command_line_works() {
        let c = run("--id 3 --hosts localhost localhost localhost --ports 9953 9982 9959");
        assert_eq!(c.peers, ["localhost:9953", "localhost:9982", "localhost:9959"]);
        assert_eq!(c.id, ReplicaId(3));
    }

    #[test]
    fn bare_ipv6_hosts_are_bracketed() {
        let c = run("--id 1 --hosts ::1 ::1 --ports 7 8");
        assert_eq!(c.peers, ["[::1]:7", "[::1]:8"]);
        let c = run("--id 1 --peers [::1]:7,[::1]:8");
        assert_eq!(c.peers, ["[::1]:7", "[::1]:8"]);
    }

    #[test]
    fn fold_joins_list_values_up_to_the_next_flag() {
        let folded = fold_list_flags(&argv("--hosts a b --id 1 --ports 1,2 -- --hosts x y"));
        assert_eq!(folded, argv("--hosts a,b --id 1 --ports 1,2 -- --hosts x y"));
    }

    #[test]
    fn help_mentions_every_flag() {
        for line in ["--help", "-h", "--id 1 --help", "--help --id", "--bogus -h"] {
            let Ok(Parsed::Help(text)) = parse_args(&argv(line)) else {
                panic!("{line:?} should give help");
            };
            for flag in [
                "--help",
                "--id",
                "--peers",
                "--hosts",
                "--ports",
                "--peer-dial",
                "--data-dir",
                "--write-quorum",
                "--read-quorum",
                "--fsync",
                "--heartbeat-ms",
                "--election-timeout-ms",
                "--request-timeout-ms",
                "--seed",
                "--max-line-bytes",
                "--max-key-bytes",
                "--max-value-bytes",
                "--max-clients",
                "--idle-timeout-ms",
                "--cluster-key-file",
                "--snapshot-every-entries",
                "--wal-segment-bytes",
            ] {
                assert!(text.contains(flag), "help does not mention {flag}:\n{text}");
            }
        }
    }

    #[test]
    fn help_states_the_defaults() {
        let Ok(Parsed::Help(text)) = parse_args(&argv("--help")) else { panic!("no help") };
        for default in ["N/2+1", "N-NW+1", "./data/<id>", "always", "(default 20)", "(default 100)"]
        {
            assert!(text.contains(default), "help lacks {default}:\n{text}");
        }
        for default in ["(default 3000)", "(default 70000)", "(default 256)", "(default 65536)"] {
            assert!(text.contains(default), "help lacks {default}:\n{text}");
        }
    }

    #[test]
    fn every_flag_is_read_into_the_config() {
        let c = run(
            "--id 1 --peers a:1,b:2,c:3 --peer-dial 2=proxy:9002 --peer-dial 3=[::1]:9 \
             --data-dir /tmp/d --fsync never --heartbeat-ms 10 --election-timeout-ms 30 \
             --request-timeout-ms 30 --seed 42 --max-line-bytes 300 --max-key-bytes 8 \
             --max-value-bytes 100 --max-clients 7 --idle-timeout-ms 5000 \
             --snapshot-every-entries 10 --wal-segment-bytes 4096 --write-quorum 3 --read-quorum 1",
        );
        assert_eq!(c.peer_dial.get(&ReplicaId(2)).map(String::as_str), Some("proxy:9002"));
        assert_eq!(c.peer_dial.get(&ReplicaId(3)).map(String::as_str), Some("[::1]:9"));
        assert_eq!(c.data_dir, PathBuf::from("/tmp/d"));
        assert_eq!(c.fsync, FsyncPolicy::Never);
        assert_eq!((c.heartbeat_ms, c.election_timeout_ms, c.request_timeout_ms), (10, 30, 30));
        assert_eq!(c.seed, Some(42));
        let limits = Limits { line_bytes_max: 300, key_bytes_max: 8, value_bytes_max: 100 };
        assert_eq!(c.limits, limits);
        assert_eq!((c.clients_max, c.idle_timeout_ms), (7, 5000));
        assert_eq!((c.snapshot_every_entries, c.wal_segment_bytes), (10, 4096));
        assert_eq!((c.write_quorum, c.read_quorum), (3, 1));
    }

    #[test]
    fn validate_needs_no_argv() {
        let c = validate(&three()).unwrap();
        assert_eq!((c.id, c.peers.len()), (ReplicaId(1), 3));
        let flags = Flags { write_quorum: Some("1".into()), ..three() };
        assert_eq!(validate(&flags).unwrap_err().0, "--write-quorum 1: must be > N/2 = 1 (N=3)");
    }

    #[test]
    fn peers_are_limited_to_255() {
        let list = |n: u32| (1..=n).map(|p| format!("h:{p}")).collect::<Vec<_>>().join(",");
        let ok = Flags { peers: Some(list(255)), id: Some("255".into()), ..Flags::default() };
        assert_eq!(validate(&ok).unwrap().id, ReplicaId(255));
        let too_many = Flags { peers: Some(list(256)), ..ok };
        assert!(validate(&too_many).unwrap_err().0.starts_with("--peers: 256 members"));
    }

    #[test]
    fn unparsable_addresses_are_refused() {
        for bad in
            ["a", "a:", "a:0", "a:65536", "a:-1", ":1", "::1:80", "[::1:80", "[x]:80", "a b:1"]
        {
            let flags = Flags { peers: Some(format!("{bad},z:9")), ..three() };
            let message = validate(&flags).unwrap_err().0;
            assert!(message.starts_with("--peers "), "{bad}: {message}");
        }
    }

    #[test]
    fn numbers_must_be_non_negative_integers() {
        let e = |v: &str| validate(&Flags { seed: Some(v.into()), ..three() }).unwrap_err().0;
        assert_eq!(e("-1"), "--seed -1: must not be negative");
        assert_eq!(e("1.5"), "--seed 1.5: not a number");
        assert_eq!(e(""), "--seed : not a number");
        assert!(e("18446744073709551616").starts_with("--seed 18446744073709551616: too large"));
    }

    #[test]
    fn peer_dial_may_not_name_a_peer_twice() {
        let dial = vec!["2=x:1".to_string(), "2=y:1".to_string()];
        let message = validate(&Flags { peer_dial: dial, ..three() }).unwrap_err().0;
        assert_eq!(message, "--peer-dial 2=y:1: peer 2 is given twice");
    }

    #[test]
    fn line_limit_must_hold_the_longest_command() {
        let limits = |line: &str| Flags {
            max_key_bytes: Some("10".into()),
            max_value_bytes: Some("100".into()),
            max_line_bytes: Some(line.into()),
            ..three()
        };
        assert!(validate(&limits("142")).is_ok());
        let message = validate(&limits("141")).unwrap_err().0;
        assert!(message.starts_with("--max-line-bytes 141: must be >= "), "{message}");
    }

    #[test]
    fn cluster_key_file_must_be_a_readable_non_empty_file() {
        let dir = std::env::temp_dir().join(format!("quorumkv-config-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let key = dir.join("cluster.key");
        let line = |path: &std::path::Path| {
            format!("--id 1 --peers a:1 --cluster-key-file {}", path.display())
        };
        std::fs::write(&key, "").unwrap();
        assert!(fails(&line(&key)).contains(": is empty"));
        assert!(fails(&line(&dir)).contains(": not a regular file"));
        std::fs::write(&key, "secret\n").unwrap();
        assert_eq!(run(&line(&key)).cluster_key_file, Some(key.clone()));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
