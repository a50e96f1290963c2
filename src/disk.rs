//! The disk thread (DESIGN §3.2: keep fsync off the thread that sends
//! heartbeats). The event loop hands persists to [`DiskClient`], which queues
//! them as jobs for one thread that owns the [`DiskStorage`]; that thread
//! writes every queued batch, fsyncs once for all of them (group commit
//! across batches), and reports back with [`Event::DiskSynced`]. The loop's
//! [`Executor`](crate::exec::Executor) holds the messages that wait for it.

use crate::mailbox::{self, Receiver, RecvError, Sender};
use crate::protocol::durable::{Persist, Snapshot};
use crate::protocol::types::LogIndex;
use crate::storage::wal::DiskStorage;
use crate::storage::{self, Storage};
use crate::transport::Event;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How often the disk thread checks for a finished snapshot save when idle.
const SNAPSHOT_POLL_MS: u64 = 10;

/// One unit of work for the disk thread.
enum Job {
    /// Write these ops; `sync` asks for them to be made durable (one ticket).
    Write { ops: Vec<Persist>, sync: bool },
    /// Save a snapshot (in the storage's own background thread).
    Snapshot(Arc<Snapshot>),
    /// Make everything durable, then answer.
    Flush(crossbeam_channel::Sender<Result<(), String>>),
}

/// The event loop's side of the disk thread; a [`Storage`] whose syncs finish later.
pub struct DiskClient {
    jobs: Sender<Job>,
    pending: Vec<Persist>,
}

/// Starts the disk thread on `storage`; finished syncs and snapshots, and a
/// fatal storage error, come back on `events`. `synced` is the number of
/// syncs already done (tickets continue from there).
pub fn start(
    storage: DiskStorage,
    events: Sender<Event>,
    synced: u64,
) -> Result<DiskClient, String> {
    let (jobs_tx, jobs_rx) = mailbox::unbounded();
    std::thread::Builder::new()
        .name("disk".into())
        .spawn(move || run(storage, jobs_rx, events, synced))
        .map_err(|e| format!("cannot start the disk thread: {e}"))?;
    Ok(DiskClient { jobs: jobs_tx, pending: Vec::new() })
}

impl DiskClient {
    fn submit(&self, job: Job) -> storage::Result<()> {
        self.jobs.send(job).map_err(|_| stopped())
    }
}

fn stopped() -> storage::Error {
    storage::Error::Io {
        path: "disk thread".into(),
        op: "queue",
        source: std::io::Error::other("the disk thread stopped after an error"),
    }
}

impl Storage for DiskClient {
    fn persist(&mut self, op: &Persist) -> storage::Result<()> {
        self.pending.push(op.clone());
        Ok(())
    }

    fn persist_owned(&mut self, op: Persist) -> storage::Result<()> {
        self.pending.push(op);
        Ok(())
    }

    /// Blocks until everything written so far is durable (start-up and shutdown only).
    fn sync(&mut self) -> storage::Result<()> {
        let ops = std::mem::take(&mut self.pending);
        self.submit(Job::Write { ops, sync: false })?;
        let (tx, rx) = crossbeam_channel::bounded(1);
        self.submit(Job::Flush(tx))?;
        match rx.recv() {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(storage::Error::Io {
                path: "disk thread".into(),
                op: "sync",
                source: std::io::Error::other(e),
            }),
            Err(_) => Err(stopped()),
        }
    }

    fn begin_sync(&mut self) -> storage::Result<bool> {
        let ops = std::mem::take(&mut self.pending);
        self.submit(Job::Write { ops, sync: true })?;
        Ok(false)
    }

    fn save_snapshot(&mut self, snapshot: Arc<Snapshot>) -> storage::Result<()> {
        let ops = std::mem::take(&mut self.pending);
        self.submit(Job::Write { ops, sync: false })?;
        self.submit(Job::Snapshot(snapshot))
    }

    /// Saved snapshots arrive as `Event::SnapshotSaved` instead.
    fn snapshot_saved(&mut self) -> storage::Result<Option<LogIndex>> {
        Ok(None)
    }
}

/// The disk thread: take every queued job, write, fsync once, report.
fn run(mut storage: DiskStorage, jobs: Receiver<Job>, events: Sender<Event>, mut synced: u64) {
    let mut queued = Vec::new();
    loop {
        let deadline = Instant::now() + Duration::from_millis(SNAPSHOT_POLL_MS);
        if let Err(RecvError) = jobs.recv_batch(&mut queued, usize::MAX, Some(deadline)) {
            return;
        }
        let result = queued
            .drain(..)
            .try_fold(Batch::default(), |batch, job| batch.add(job, &mut storage))
            .and_then(|batch| batch.finish(&mut storage, &mut synced, &events));
        if let Err(e) = result {
            let _ = events.send(Event::DiskFailed(e.to_string()));
            return;
        }
    }
}

/// What one turn of the disk thread gathered.
#[derive(Default)]
struct Batch {
    syncs: u64,
    flushes: Vec<crossbeam_channel::Sender<Result<(), String>>>,
}

impl Batch {
    fn add(mut self, job: Job, storage: &mut DiskStorage) -> storage::Result<Batch> {
        match job {
            Job::Write { ops, sync } => {
                for op in &ops {
                    storage.persist(op)?;
                }
                self.syncs += u64::from(sync);
            }
            Job::Snapshot(snapshot) => storage.save_snapshot(snapshot)?,
            Job::Flush(tx) => self.flushes.push(tx),
        }
        Ok(self)
    }

    fn finish(
        self,
        storage: &mut DiskStorage,
        synced: &mut u64,
        events: &Sender<Event>,
    ) -> storage::Result<()> {
        if self.syncs > 0 || !self.flushes.is_empty() {
            let started = Instant::now();
            storage.sync()?;
            *synced += self.syncs;
            let fsync_us = started.elapsed().as_micros() as u64;
            let (segment_bytes, snapshot_bytes) =
                (storage.segment_bytes(), storage.snapshot_bytes());
            let _ = events.send(Event::DiskSynced {
                ticket: *synced,
                fsync_us,
                segment_bytes,
                snapshot_bytes,
            });
            for tx in self.flushes {
                let _ = tx.send(Ok(()));
            }
        }
        if let Some(index) = storage.snapshot_saved()? {
            let _ = events.send(Event::SnapshotSaved(index));
        }
        Ok(())
    }
}
