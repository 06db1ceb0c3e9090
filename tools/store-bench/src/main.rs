//! store-bench: the broker's persistent-session write pattern against fjall,
//! redb and SQLite. See README.md.

mod store;

#[cfg(feature = "fjall")]
mod fjall_store;
#[cfg(feature = "redb")]
mod redb_store;
#[cfg(feature = "sqlite")]
mod sqlite_store;

use std::collections::VecDeque;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};
use store::{Mode, Options, Result, Store};

const SESSIONS: u64 = 1_000;
const PAYLOAD: usize = 128;
const SEED: u64 = 0x2545_F491_4F6C_DD1D;

const USAGE: &str = "\
usage: store-bench fjall|redb|sqlite [--durable|--sync-data|--normal|--no-sync] [--batch N]
                   [--phases abcdr] [--messages N] [--iterations N] [--phase-secs S]
                   [--recovery-messages N] [--dir PATH] [--json FILE] [--label TEXT]
                   [--redb-quick-repair] [--keep]

  --durable            fsync per commit (default): fjall SyncAll, redb Immediate, SQLite WAL+FULL
  --sync-data          fjall only: PersistMode::SyncData (fdatasync)
  --normal             SQLite only: WAL + synchronous=NORMAL
  --no-sync            no fsync per commit (fjall Buffer, redb Durability::None, SQLite OFF)
  --batch N            messages per commit in phases A and B (default 16)
  --phases LETTERS     a=append b=acknowledge(delete)+compact c=steady state d=reconnect reads
                       r=recovery (default abcdr; a..d share one store, r uses fresh ones)
  --messages N         phase A message count (default 200000)
  --iterations N       phase C iterations (default 100000)
  --phase-secs S       time cap for phases A and C: they stop early at S seconds (default 60)
  --recovery-messages N  messages stored before the recovery test (default 1000000)
  --dir PATH           parent folder for the stores (default /tmp/store-bench-data); must
                       be on a real disk, fsync on tmpfs is free
  --json FILE          append one JSON object per phase to FILE
  --label TEXT         free text copied into every JSON object (e.g. run1)
  --redb-quick-repair  redb: set_quick_repair(true) on every write transaction
  --keep               keep the store folders afterwards
";

struct Args {
    engine: String,
    mode: Mode,
    batch: usize,
    phases: String,
    messages: usize,
    iterations: usize,
    phase_secs: f64,
    recovery_messages: usize,
    dir: PathBuf,
    json: Option<PathBuf>,
    label: String,
    opts: Options,
    keep: bool,
    crash_child: Option<usize>,
}

fn parse_args() -> std::result::Result<Args, String> {
    let mut it = std::env::args().skip(1);
    let mut a = Args {
        engine: String::new(),
        mode: Mode::Durable,
        batch: 16,
        phases: "abcdr".into(),
        messages: 200_000,
        iterations: 100_000,
        phase_secs: 60.0,
        recovery_messages: 1_000_000,
        dir: PathBuf::from("/tmp/store-bench-data"),
        json: None,
        label: String::new(),
        opts: Options::default(),
        keep: false,
        crash_child: None,
    };
    fn val<T: std::str::FromStr>(
        it: &mut impl Iterator<Item = String>,
        f: &str,
    ) -> std::result::Result<T, String> {
        it.next()
            .ok_or(format!("{f} needs a value"))?
            .parse()
            .map_err(|_| format!("bad value for {f}"))
    }
    while let Some(x) = it.next() {
        match x.as_str() {
            "--durable" => a.mode = Mode::Durable,
            "--sync-data" => a.mode = Mode::SyncData,
            "--normal" => a.mode = Mode::Normal,
            "--no-sync" => a.mode = Mode::NoSync,
            "--batch" => a.batch = val(&mut it, &x)?,
            "--phases" => a.phases = val(&mut it, &x)?,
            "--messages" => a.messages = val(&mut it, &x)?,
            "--iterations" => a.iterations = val(&mut it, &x)?,
            "--phase-secs" => a.phase_secs = val(&mut it, &x)?,
            "--recovery-messages" => a.recovery_messages = val(&mut it, &x)?,
            "--dir" => a.dir = PathBuf::from(val::<String>(&mut it, &x)?),
            "--json" => a.json = Some(PathBuf::from(val::<String>(&mut it, &x)?)),
            "--label" => a.label = val(&mut it, &x)?,
            "--redb-quick-repair" => a.opts.redb_quick_repair = true,
            "--keep" => a.keep = true,
            "--crash-child" => a.crash_child = Some(val(&mut it, &x)?),
            "-h" | "--help" => return Err(String::new()),
            e if !e.starts_with('-') && a.engine.is_empty() => a.engine = e.to_string(),
            e => return Err(format!("unknown argument {e:?}")),
        }
    }
    if a.engine.is_empty() {
        return Err("which engine?".into());
    }
    if a.batch == 0 {
        return Err("--batch must be at least 1".into());
    }
    Ok(a)
}

/// xorshift64*: fixed seed, no dependency.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    fn fill(&mut self, buf: &mut [u8]) {
        for c in buf.chunks_mut(8) {
            let v = self.next().to_le_bytes();
            c.copy_from_slice(&v[..c.len()]);
        }
    }
}

/// Messages generated for one commit: owned payloads, borrowed by the store.
struct Batch {
    keys: Vec<(u64, u64)>,
    payloads: Vec<[u8; PAYLOAD]>,
}
impl Batch {
    fn records(&self) -> Vec<(u64, u64, &[u8])> {
        self.keys
            .iter()
            .zip(&self.payloads)
            .map(|(&(s, q), p)| (s, q, p.as_slice()))
            .collect()
    }
}

struct Gen {
    rng: Rng,
    next_seq: Vec<u64>,
}
impl Gen {
    fn new() -> Self {
        Self {
            rng: Rng(SEED),
            next_seq: vec![0; SESSIONS as usize],
        }
    }
    fn message(&mut self, session: u64, b: &mut Batch) {
        let q = self.next_seq[session as usize];
        self.next_seq[session as usize] += 1;
        let mut p = [0u8; PAYLOAD];
        self.rng.fill(&mut p);
        b.keys.push((session, q));
        b.payloads.push(p);
    }
    /// `n` messages, each to a random session.
    fn random_batch(&mut self, n: usize) -> Batch {
        let mut b = Batch {
            keys: Vec::with_capacity(n),
            payloads: Vec::with_capacity(n),
        };
        for _ in 0..n {
            let s = self.rng.below(SESSIONS);
            self.message(s, &mut b);
        }
        b
    }
    fn batch_for(&mut self, sessions: &[u64]) -> Batch {
        let mut b = Batch {
            keys: Vec::with_capacity(sessions.len()),
            payloads: Vec::with_capacity(sessions.len()),
        };
        for &s in sessions {
            self.message(s, &mut b);
        }
        b
    }
}

/// Latency summary over per-operation durations.
struct Lat(Vec<u64>);
impl Lat {
    fn new() -> Self {
        Lat(Vec::new())
    }
    fn time<T>(&mut self, f: impl FnOnce() -> T) -> T {
        let t = Instant::now();
        let r = f();
        self.0.push(t.elapsed().as_nanos() as u64);
        r
    }
    fn pct(&mut self, p: f64) -> f64 {
        if self.0.is_empty() {
            return 0.0;
        }
        self.0.sort_unstable();
        let i = ((p / 100.0) * (self.0.len() - 1) as f64).round() as usize;
        self.0[i] as f64 / 1e6
    }
    fn fields(&mut self, prefix: &str, out: &mut Vec<(String, Val)>) {
        out.push((format!("{prefix}_p50_ms"), Val::F(self.pct(50.0))));
        out.push((format!("{prefix}_p99_ms"), Val::F(self.pct(99.0))));
        out.push((format!("{prefix}_max_ms"), Val::F(self.pct(100.0))));
    }
}

enum Val {
    F(f64),
    U(u64),
    S(String),
}

struct Report<'a> {
    args: &'a Args,
    json: Option<std::fs::File>,
}
impl Report<'_> {
    fn emit(&mut self, phase: &str, fields: Vec<(String, Val)>) {
        let a = self.args;
        let mut line = format!("[{} {} b={}] {phase}:", a.engine, a.mode.name(), a.batch);
        let mut js = format!(
            "{{\"engine\":\"{}\",\"mode\":\"{}\",\"batch\":{},\"label\":{:?},\"redb_quick_repair\":{},\"phase\":\"{phase}\"",
            a.engine,
            a.mode.name(),
            a.batch,
            a.label,
            a.opts.redb_quick_repair
        );
        for (k, v) in &fields {
            match v {
                Val::F(x) => {
                    line += &format!(" {k}={x:.3}");
                    js += &format!(",\"{k}\":{x:.4}");
                }
                Val::U(x) => {
                    line += &format!(" {k}={x}");
                    js += &format!(",\"{k}\":{x}");
                }
                Val::S(x) => {
                    line += &format!(" {k}={x:?}");
                    js += &format!(",\"{k}\":{x:?}");
                }
            }
        }
        // The 1-minute load average when the phase ended: on a shared machine
        // it tells which figures were measured under someone else's load.
        let load = std::fs::read_to_string("/proc/loadavg")
            .ok()
            .and_then(|l| l.split_whitespace().next().map(str::to_string))
            .unwrap_or_else(|| "null".into());
        line += &format!(" loadavg1={load}");
        js += &format!(",\"loadavg1\":{load}}}");
        println!("{line}");
        if let Some(f) = &mut self.json {
            writeln!(f, "{js}").expect("write json");
        }
    }
}

/// (apparent bytes, allocated bytes) of every file under `dir`.
fn disk(dir: &Path) -> (u64, u64) {
    use std::os::unix::fs::MetadataExt;
    let mut apparent = 0;
    let mut allocated = 0;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in rd.flatten() {
            let Ok(m) = e.metadata() else { continue };
            if m.is_dir() {
                stack.push(e.path());
            } else {
                apparent += m.len();
                allocated += m.blocks() * 512;
            }
        }
    }
    (apparent, allocated)
}

fn disk_fields(dir: &Path, prefix: &str, out: &mut Vec<(String, Val)>) {
    let (ap, al) = disk(dir);
    out.push((format!("{prefix}_bytes"), Val::U(ap)));
    out.push((format!("{prefix}_alloc_bytes"), Val::U(al)));
}

fn total_count(st: &mut dyn Store) -> Result<usize> {
    let mut n = 0;
    for s in 0..SESSIONS {
        let v = st.range_read(s)?;
        if v.windows(2).any(|w| w[0].0 >= w[1].0) {
            return Err(format!("session {s}: sequence not strictly increasing").into());
        }
        n += v.len();
    }
    Ok(n)
}

fn secs(d: Duration) -> f64 {
    d.as_secs_f64()
}

fn run(a: &Args) -> Result<()> {
    let json = match &a.json {
        Some(p) => Some(
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(p)?,
        ),
        None => None,
    };
    let mut rep = Report { args: a, json };
    let tag = format!(
        "{}-{}-b{}{}-{}",
        a.engine,
        a.mode.name(),
        a.batch,
        if a.opts.redb_quick_repair { "-qr" } else { "" },
        std::process::id()
    );
    let dir = a.dir.join(&tag);
    let _ = std::fs::remove_dir_all(&dir);

    let phases = a.phases.as_str();
    let mut wl = Gen::new();
    let wants_store = phases.chars().any(|c| "abcd".contains(c));
    if wants_store {
        let mut st = store::open(&a.engine, &dir, a.mode, &a.opts)?;
        let mut appended: Vec<(u64, u64)> = Vec::new();

        if phases.contains('a') {
            let cap = Duration::from_secs_f64(a.phase_secs);
            let mut lat = Lat::new();
            let t0 = Instant::now();
            let mut capped = false;
            while appended.len() < a.messages {
                if t0.elapsed() >= cap {
                    capped = true;
                    break;
                }
                let n = a.batch.min(a.messages - appended.len());
                let b = wl.random_batch(n);
                let recs = b.records();
                lat.time(|| st.append_batch(&recs))?;
                appended.extend_from_slice(&b.keys);
            }
            st.flush()?;
            let el = secs(t0.elapsed());
            let stored = total_count(st.as_mut())?;
            if stored != appended.len() {
                return Err(
                    format!("phase A: {stored} stored, {} appended", appended.len()).into(),
                );
            }
            let mut f = vec![
                ("messages".into(), Val::U(appended.len() as u64)),
                ("commits".into(), Val::U(lat.0.len() as u64)),
                ("time_capped".into(), Val::U(capped as u64)),
                ("secs".into(), Val::F(el)),
                ("msgs_per_s".into(), Val::F(appended.len() as f64 / el)),
                ("commits_per_s".into(), Val::F(lat.0.len() as f64 / el)),
            ];
            lat.fields("commit", &mut f);
            disk_fields(&dir, "disk_after_a", &mut f);
            rep.emit("A_append", f);
        }

        if phases.contains('b') {
            let mut lat = Lat::new();
            let t0 = Instant::now();
            for chunk in appended.chunks(a.batch) {
                lat.time(|| st.delete_batch(chunk))?;
            }
            st.flush()?;
            let el = secs(t0.elapsed());
            let left = total_count(st.as_mut())?;
            if left != 0 {
                return Err(format!("phase B: {left} messages left after deleting all").into());
            }
            let mut f = vec![
                ("messages".into(), Val::U(appended.len() as u64)),
                ("commits".into(), Val::U(lat.0.len() as u64)),
                ("secs".into(), Val::F(el)),
                ("msgs_per_s".into(), Val::F(appended.len() as f64 / el)),
                ("commits_per_s".into(), Val::F(lat.0.len() as f64 / el)),
            ];
            lat.fields("commit", &mut f);
            disk_fields(&dir, "disk_after_b", &mut f);
            // Give background work (fjall flushes/compactions) a moment, then
            // measure again: is the drained store shrinking on its own?
            std::thread::sleep(Duration::from_secs(2));
            disk_fields(&dir, "disk_after_b_2s", &mut f);
            let t = Instant::now();
            let what = st.compact()?;
            f.push(("compact_secs".into(), Val::F(secs(t.elapsed()))));
            f.push(("compact".into(), Val::S(what)));
            disk_fields(&dir, "disk_after_compact", &mut f);
            rep.emit("B_ack", f);
            appended.clear();
        }

        if phases.contains('c') {
            const CB: usize = 16;
            const DEPTH: usize = 8;
            // Whatever earlier phases left (A without B) stays; C must leave
            // exactly that behind.
            let before = total_count(st.as_mut())?;
            let cap = Duration::from_secs_f64(a.phase_secs);
            let mut la = Lat::new();
            let mut ld = Lat::new();
            let mut queue: VecDeque<Vec<(u64, u64)>> = VecDeque::new();
            let (mut max_ap, mut max_al) = (0, 0);
            let mut iters = 0;
            let mut capped = false;
            let t0 = Instant::now();
            while iters < a.iterations {
                if t0.elapsed() >= cap {
                    capped = true;
                    break;
                }
                let b = wl.random_batch(CB);
                let recs = b.records();
                la.time(|| st.append_batch(&recs))?;
                queue.push_back(b.keys);
                if queue.len() > DEPTH {
                    let old = queue.pop_front().expect("non-empty");
                    ld.time(|| st.delete_batch(&old))?;
                }
                iters += 1;
                if iters % 1000 == 0 {
                    let (ap, al) = disk(&dir);
                    max_ap = max_ap.max(ap);
                    max_al = max_al.max(al);
                }
            }
            st.flush()?;
            let el = secs(t0.elapsed());
            let mut f = vec![
                ("iterations".into(), Val::U(iters as u64)),
                ("time_capped".into(), Val::U(capped as u64)),
                ("secs".into(), Val::F(el)),
                ("msgs_per_s".into(), Val::F((iters * CB) as f64 / el)),
                (
                    "commits_per_s".into(),
                    Val::F((la.0.len() + ld.0.len()) as f64 / el),
                ),
            ];
            la.fields("append", &mut f);
            ld.fields("delete", &mut f);
            disk_fields(&dir, "disk_end_of_c", &mut f);
            f.push(("disk_max_during_c_bytes".into(), Val::U(max_ap)));
            f.push(("disk_max_during_c_alloc_bytes".into(), Val::U(max_al)));
            // Drain what is still queued (untimed) so phase D starts empty.
            for old in queue.drain(..) {
                st.delete_batch(&old)?;
            }
            st.flush()?;
            let left = total_count(st.as_mut())?;
            if left != before {
                return Err(format!(
                    "phase C: {left} messages left after draining, {before} before"
                )
                .into());
            }
            rep.emit("C_steady", f);
        }

        if phases.contains('d') {
            const PER: usize = 100;
            let before = total_count(st.as_mut())?;
            // 100 messages for each session, in random order, batches of 256.
            let mut order: Vec<u64> = (0..SESSIONS)
                .flat_map(|s| std::iter::repeat_n(s, PER))
                .collect();
            for i in (1..order.len()).rev() {
                let j = wl.rng.below(i as u64 + 1) as usize;
                order.swap(i, j);
            }
            let t0 = Instant::now();
            for chunk in order.chunks(256) {
                let b = wl.batch_for(chunk);
                st.append_batch(&b.records())?;
            }
            st.flush()?;
            let load = secs(t0.elapsed());
            let mut sessions: Vec<u64> = (0..SESSIONS).collect();
            for i in (1..sessions.len()).rev() {
                let j = wl.rng.below(i as u64 + 1) as usize;
                sessions.swap(i, j);
            }
            let mut lat = Lat::new();
            let mut read = 0;
            let t0 = Instant::now();
            for &s in &sessions {
                let v = lat.time(|| st.range_read(s))?;
                if v.len() < PER {
                    return Err(format!("phase D: session {s} has {} messages", v.len()).into());
                }
                read += v.len();
            }
            let el = secs(t0.elapsed());
            if read != before + PER * SESSIONS as usize {
                return Err(format!(
                    "phase D: read {read}, expected {}",
                    before + PER * SESSIONS as usize
                )
                .into());
            }
            let mut f = vec![
                (
                    "load_messages".into(),
                    Val::U((PER * SESSIONS as usize) as u64),
                ),
                ("load_secs".into(), Val::F(load)),
                ("reads".into(), Val::U(SESSIONS)),
                ("messages_read".into(), Val::U(read as u64)),
                ("secs".into(), Val::F(el)),
                ("reads_per_s".into(), Val::F(SESSIONS as f64 / el)),
            ];
            lat.fields("read", &mut f);
            disk_fields(&dir, "disk_after_d", &mut f);
            rep.emit("D_reconnect", f);
        }
        st.close()?;
        if !a.keep {
            std::fs::remove_dir_all(&dir)?;
        }
    }

    if phases.contains('r') {
        recovery(a, &mut rep, &dir)?;
    }
    Ok(())
}

/// Store `n` messages, 1000 sessions round-robin, 1000 per commit.
fn load(st: &mut dyn Store, n: usize) -> Result<()> {
    let mut wl = Gen::new();
    let mut i = 0u64;
    while (i as usize) < n {
        let k = 1000.min(n - i as usize) as u64;
        let sessions: Vec<u64> = (i..i + k).map(|x| x % SESSIONS).collect();
        let b = wl.batch_for(&sessions);
        st.append_batch(&b.records())?;
        i += k;
    }
    Ok(())
}

fn recovery(a: &Args, rep: &mut Report<'_>, base: &Path) -> Result<()> {
    let n = a.recovery_messages;
    let expect = (0..n as u64).filter(|x| x % SESSIONS == 0).count();

    // 1. Clean close, reopen, read one session.
    let dir = base.with_extension("recovery-clean");
    let _ = std::fs::remove_dir_all(&dir);
    let mut st = store::open(&a.engine, &dir, a.mode, &a.opts)?;
    let t = Instant::now();
    load(st.as_mut(), n)?;
    st.flush()?;
    let load_secs = secs(t.elapsed());
    let mut f = vec![
        ("messages".into(), Val::U(n as u64)),
        ("load_secs".into(), Val::F(load_secs)),
        ("load_msgs_per_s".into(), Val::F(n as f64 / load_secs)),
    ];
    disk_fields(&dir, "disk_loaded", &mut f);
    let t = Instant::now();
    st.close()?;
    f.push(("close_secs".into(), Val::F(secs(t.elapsed()))));
    disk_fields(&dir, "disk_closed", &mut f);
    let t = Instant::now();
    let mut st = store::open(&a.engine, &dir, a.mode, &a.opts)?;
    let open_s = secs(t.elapsed());
    let t = Instant::now();
    let v = st.range_read(0)?;
    let read_s = secs(t.elapsed());
    f.push(("open_secs".into(), Val::F(open_s)));
    f.push(("first_read_secs".into(), Val::F(read_s)));
    f.push(("session0_messages".into(), Val::U(v.len() as u64)));
    f.push(("session0_expected".into(), Val::U(expect as u64)));
    st.close()?;
    if !a.keep {
        std::fs::remove_dir_all(&dir)?;
    }
    rep.emit("R_clean_reopen", f);

    // 2. Crash: a child process loads the same data and aborts without
    //    closing; then open (repair / journal replay) and read one session.
    let dir = base.with_extension("recovery-crash");
    let _ = std::fs::remove_dir_all(&dir);
    let mut cmd = Command::new(std::env::current_exe()?);
    cmd.arg(&a.engine)
        .arg(format!("--{}", a.mode.name()))
        .arg("--dir")
        .arg(&dir)
        .arg("--crash-child")
        .arg(n.to_string());
    if a.opts.redb_quick_repair {
        cmd.arg("--redb-quick-repair");
    }
    let status = cmd.status()?;
    if status.success() {
        return Err("crash child exited normally".into());
    }
    let mut f = vec![("messages".into(), Val::U(n as u64))];
    disk_fields(&dir, "disk_after_crash", &mut f);
    let t = Instant::now();
    let mut st = store::open(&a.engine, &dir, a.mode, &a.opts)?;
    let open_s = secs(t.elapsed());
    let t = Instant::now();
    let v = st.range_read(0)?;
    let read_s = secs(t.elapsed());
    f.push(("open_secs".into(), Val::F(open_s)));
    f.push(("first_read_secs".into(), Val::F(read_s)));
    f.push(("session0_messages".into(), Val::U(v.len() as u64)));
    f.push(("session0_expected".into(), Val::U(expect as u64)));
    st.close()?;
    if !a.keep {
        std::fs::remove_dir_all(&dir)?;
    }
    rep.emit("R_crash_reopen", f);
    Ok(())
}

fn crash_child(a: &Args, n: usize) -> Result<()> {
    let _ = std::fs::remove_dir_all(&a.dir);
    let mut st = store::open(&a.engine, &a.dir, a.mode, &a.opts)?;
    load(st.as_mut(), n)?;
    // No flush, no close: `exit` runs no destructors, so the store is left
    // as a crashed process leaves it (what reached the OS is kept, as after
    // kill -9; this is not a power loss).
    std::process::exit(86);
}

fn main() {
    let a = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            if !e.is_empty() {
                eprintln!("store-bench: {e}");
            }
            eprint!("{USAGE}");
            std::process::exit(2);
        }
    };
    let r = match a.crash_child {
        Some(n) => crash_child(&a, n),
        None => run(&a),
    };
    if let Err(e) = r {
        eprintln!("store-bench: {e}");
        std::process::exit(1);
    }
}
