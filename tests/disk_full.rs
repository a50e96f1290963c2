//! A full disk, on a real file system: a one-replica cluster whose data
//! directory sits on a small ext4 image loop-mounted by the test. Needs root
//! (mount) and mkfs.ext4, e2fsck and resize2fs; without them the test says so
//! and passes without running.

use driver::client::Client;
use std::fs::{self, File};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Size of the file system the replica fills.
const SMALL_FS_BYTES: u64 = 48 << 20;
/// Size it is grown to before the restart.
const GROWN_FS_BYTES: u64 = 200 << 20;
/// Values written until the disk is full (about 40 MB fill it).
const VALUE_BYTES: usize = 60_000;
/// Writes at most: 120 MB, well past the file system's size.
const WRITES_MAX: usize = 2_000;
/// Keys the writes cycle over.
const KEYS: usize = 300;

/// The loop-mounted image, the replica and their files; undone on drop.
struct SmallDisk {
    root: PathBuf,
    mounted: bool,
    child: Option<Child>,
}

impl SmallDisk {
    fn image(&self) -> PathBuf {
        self.root.join("fs.img")
    }

    fn mount_point(&self) -> PathBuf {
        self.root.join("mnt")
    }

    fn log(&self) -> PathBuf {
        self.root.join("replica.log")
    }

    fn mount(&mut self) -> Result<(), String> {
        run("mount", &["-o", "loop", path(&self.image()), path(&self.mount_point())])?;
        self.mounted = true;
        Ok(())
    }

    fn unmount(&mut self) -> Result<(), String> {
        run("umount", &[path(&self.mount_point())])?;
        self.mounted = false;
        Ok(())
    }

    /// Starts the one replica on `port`, appending its output to the log.
    fn start(&mut self, port: u16) -> Result<(), String> {
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log())
            .map_err(|e| format!("open log: {e}"))?;
        let err = log.try_clone().map_err(|e| format!("clone log: {e}"))?;
        let data = self.mount_point().join("data");
        let child = Command::new(server_binary())
            .args(["--id", "1", "--peers", &format!("127.0.0.1:{port}")])
            .args(["--data-dir", path(&data)])
            .stdout(log)
            .stderr(err)
            .spawn()
            .map_err(|e| format!("spawn: {e}"))?;
        self.child = Some(child);
        Ok(())
    }

    /// Waits for the replica to exit; its exit code.
    fn wait_exit(&mut self, limit: Duration) -> Result<Option<i32>, String> {
        let child = self.child.as_mut().ok_or("no replica")?;
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = child.try_wait().map_err(|e| format!("wait: {e}"))? {
                self.child = None;
                return Ok(status.code());
            }
            if Instant::now() > deadline {
                return Err(format!("replica still running after {limit:?}"));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        if self.mounted {
            let _ = run("umount", &[path(&self.mount_point())]);
        }
        let _ = fs::remove_dir_all(&self.root);
    }
}

/// The server binary cargo built for this test run, or `QUORUMKV_BIN`.
fn server_binary() -> PathBuf {
    std::env::var_os("QUORUMKV_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_quorumkv")))
}

fn path(p: &Path) -> &str {
    p.to_str().expect("temp paths are UTF-8")
}

/// Runs a tool to completion; an error names it and its stderr.
fn run(tool: &str, args: &[&str]) -> Result<(), String> {
    run_ok(tool, args, &[0])
}

/// [`run`], taking any of `ok` as a successful exit code.
fn run_ok(tool: &str, args: &[&str], ok: &[i32]) -> Result<(), String> {
    let out = Command::new(tool)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("{tool}: {e}"))?;
    if out.status.code().is_some_and(|c| ok.contains(&c)) {
        Ok(())
    } else {
        Err(format!("{tool} {args:?}: {}", String::from_utf8_lossy(&out.stderr).trim()))
    }
}

fn free_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind a free port");
    l.local_addr().expect("local addr").port()
}

/// A client once the replica answers STATUS as a leader.
fn ready_client(port: u16, limit: Duration) -> Result<Client, String> {
    let deadline = Instant::now() + limit;
    let addr = format!("127.0.0.1:{port}");
    loop {
        if let Ok(mut k) = Client::connect(&addr, Duration::from_secs(5)) {
            if k.cmd("STATUS").is_ok_and(|s| s.contains("role=leader")) {
                return Ok(k);
            }
        }
        if Instant::now() > deadline {
            return Err(format!("replica on {addr} not leading after {limit:?}"));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn value(i: usize) -> String {
    format!("{i:06}{}", "x".repeat(VALUE_BYTES - 6))
}

#[test]
fn a_full_disk_stops_the_replica_with_a_clear_error_and_a_restart_with_room_keeps_every_acknowledged_write(
) {
    let root = std::env::temp_dir().join(format!("qkv-diskfull-{}", std::process::id()));
    let _ = fs::remove_dir_all(&root);
    fs::create_dir_all(root.join("mnt")).expect("create the test's directory");
    let mut disk = SmallDisk { root, mounted: false, child: None };
    let image = File::create(disk.image()).expect("create the image");
    image.set_len(SMALL_FS_BYTES).expect("size the image");
    drop(image);
    let made = run("mkfs.ext4", &["-q", "-F", path(&disk.image())]).and_then(|()| disk.mount());
    if let Err(e) = made {
        eprintln!("skipped: cannot make and mount a small ext4 file system here ({e})");
        return;
    }
    let port = free_port();
    disk.start(port).expect("start the replica");
    let mut k = ready_client(port, Duration::from_secs(10)).expect("replica ready");

    // Write until the disk is full: every OK is remembered, and the first
    // answer that is not OK must say why.
    let mut acknowledged = vec![None; KEYS];
    let mut refusal = None;
    for i in 0..WRITES_MAX {
        match k.cmd(&format!("PUT k{} {}", i % KEYS, value(i))) {
            Ok(reply) if reply.starts_with("OK ") => acknowledged[i % KEYS] = Some(i),
            Ok(reply) => {
                refusal = Some(reply);
                break;
            }
            Err(e) => {
                refusal = Some(format!("no answer: {e}"));
                break;
            }
        }
    }
    let refusal = refusal.expect("the disk filled up within WRITES_MAX writes");
    assert!(
        refusal.starts_with("ERR ") && refusal.contains("No space left on device"),
        "the write that met the full disk got {refusal:?}"
    );
    let code = disk.wait_exit(Duration::from_secs(10)).expect("the replica stops");
    assert_ne!(code, Some(0), "a replica that cannot write exits with an error");
    let log = fs::read_to_string(disk.log()).expect("read the log");
    assert!(log.contains("No space left on device"), "the log names the cause:\n{log}");

    // Give the file system room, start the replica again: every
    // acknowledged write is there, and it takes new ones.
    disk.unmount().expect("unmount");
    File::options()
        .write(true)
        .open(disk.image())
        .and_then(|f| f.set_len(GROWN_FS_BYTES))
        .expect("grow the image");
    // e2fsck exits 1 when it corrected something (a clean unmount leaves nothing).
    run_ok("e2fsck", &["-f", "-y", path(&disk.image())], &[0, 1]).expect("e2fsck");
    run("resize2fs", &[path(&disk.image())]).expect("resize2fs");
    disk.mount().expect("mount again");
    disk.start(port).expect("restart the replica");
    let mut k = ready_client(port, Duration::from_secs(10)).expect("replica ready again");
    for (key, last) in acknowledged.iter().enumerate() {
        let Some(i) = last else { continue };
        let got = k.get(&format!("k{key}")).expect("GET");
        let want = value(*i);
        assert!(got.as_deref() >= Some(want.as_str()), "k{key}: lost write {i}");
    }
    let after = k.cmd("PUT after 1").expect("PUT after the restart");
    assert!(after.starts_with("OK "), "PUT after the restart: {after}");
}
