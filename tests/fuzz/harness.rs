//! The fuzz driver shared by every target: proptest's runner, run either for a fixed
//! number of cases (the smoke run `cargo test` does) or, with `PATHOS_FUZZ_SECONDS`, in
//! seeded batches until a deadline (what `scripts/fuzz.sh` does).
//!
//! Every execution of a property body is counted, and the count is reported on stderr as
//! one `FUZZ-RESULT target=… execs=… crashes=… seconds=…` line that the script parses. A
//! watchdog thread ends the process when a target makes no progress for
//! `PATHOS_FUZZ_HANG_SECS` (default 60), printing the input it was stuck on: a hang is a
//! finding too, and a test that never returns would report nothing.
//!
//! Environment: `PATHOS_FUZZ_CASES` (cases of the smoke run, default 256),
//! `PATHOS_FUZZ_SECONDS` (time budget; unset means one smoke run), `PATHOS_FUZZ_SEED`
//! (first seed, default 0; runs are deterministic for a given seed and case count).

use std::fmt::Debug;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use proptest::strategy::Strategy;
use proptest::test_runner::{Config, RngSeed, TestCaseError, TestError, TestRunner};

fn env_num<T: std::str::FromStr>(key: &str) -> Option<T> {
    let v = std::env::var(key).ok()?;
    match v.trim().parse() {
        Ok(n) => Some(n),
        Err(_) => panic!("{key}={v:?} is not a number"),
    }
}

fn config(cases: u32, seed: u64) -> Config {
    Config {
        cases,
        rng_seed: RngSeed::Fixed(seed),
        // Runs leave no files behind; a failure prints its seed and minimal input instead.
        failure_persistence: None,
        // Hostile inputs are large; shrinking them must not eat the whole budget.
        max_shrink_time: 30_000,
        ..Config::default()
    }
}

/// The input a target is running, kept for the watchdog's report.
type Slot = Arc<Mutex<Option<Box<dyn Debug + Send>>>>;

/// Ends the process when `execs` stops moving for `limit`. With `progress`, also
/// prints the count every ten seconds, so that a run the process cannot survive (an
/// abort on a failed allocation) still shows how far it got.
fn watchdog(
    name: &'static str,
    execs: Arc<AtomicU64>,
    slot: Slot,
    done: Arc<AtomicBool>,
    progress: bool,
) {
    let limit = Duration::from_secs(env_num("PATHOS_FUZZ_HANG_SECS").unwrap_or(60));
    std::thread::spawn(move || {
        let mut last = execs.load(Ordering::Relaxed);
        let mut since = Instant::now();
        let mut printed = Instant::now();
        while !done.load(Ordering::Relaxed) {
            std::thread::sleep(Duration::from_millis(200));
            if done.load(Ordering::Relaxed) {
                break;
            }
            let now = execs.load(Ordering::Relaxed);
            if progress && printed.elapsed() >= Duration::from_secs(10) {
                eprintln!("FUZZ-PROGRESS target={name} execs={now}");
                printed = Instant::now();
            }
            if now != last {
                last = now;
                since = Instant::now();
            } else if since.elapsed() > limit {
                let input = slot.lock().unwrap_or_else(|e| e.into_inner());
                eprintln!(
                    "FUZZ-HANG target={name}: one case ran over {}s; input: {:?}",
                    limit.as_secs(),
                    input
                );
                eprintln!("FUZZ-RESULT target={name} execs={now} crashes=1 seconds=nan");
                std::process::exit(3);
            }
        }
    });
}

/// Runs `body` on inputs from `strategy` and fails the test if any input made it fail
/// or panic. `body` gets each input by reference; it should return `Err` (via
/// `prop_assert!`) for a broken property and may panic only by accident: a panic is
/// exactly what the fuzzing looks for.
pub fn fuzz<S>(
    name: &'static str,
    strategy: S,
    body: impl Fn(&S::Value) -> Result<(), TestCaseError>,
) where
    S: Strategy,
    S::Value: Clone + Debug + Send + 'static,
{
    let budget: Option<f64> = env_num("PATHOS_FUZZ_SECONDS");
    let execs = Arc::new(AtomicU64::new(0));
    let slot: Slot = Arc::new(Mutex::new(None));
    let done = Arc::new(AtomicBool::new(false));
    watchdog(
        name,
        execs.clone(),
        slot.clone(),
        done.clone(),
        budget.is_some(),
    );
    let run_one = |v: S::Value| {
        execs.fetch_add(1, Ordering::Relaxed);
        *slot.lock().unwrap_or_else(|e| e.into_inner()) = Some(Box::new(v.clone()));
        body(&v)
    };

    let start = Instant::now();
    let first_seed: u64 = env_num("PATHOS_FUZZ_SEED").unwrap_or(0);
    let mut crashes = 0u64;
    // Replaying a crash: PATHOS_FUZZ_SEED=seed PATHOS_FUZZ_CASES=cases, one target.
    let mut report = |seed: u64, cases: u32, result: Result<(), TestError<S::Value>>| {
        if let Err(e) = result {
            crashes += 1;
            eprintln!("FUZZ-CRASH target={name} seed={seed} cases={cases}: {e}");
        }
    };
    match budget {
        None => {
            let cases = env_num("PATHOS_FUZZ_CASES").unwrap_or(256);
            let mut runner = TestRunner::new(config(cases, first_seed));
            report(first_seed, cases, runner.run(&strategy, run_one));
        }
        Some(secs) => {
            // Batches of about a second each, one seed per batch, so the run stops near
            // the deadline and every batch can be replayed from its seed.
            let deadline = start + Duration::from_secs_f64(secs);
            let mut batch = 16u32;
            let mut seed = first_seed;
            while Instant::now() < deadline {
                let t0 = Instant::now();
                let mut runner = TestRunner::new(config(batch, seed));
                report(seed, batch, runner.run(&strategy, run_one));
                let rate = f64::from(batch) / t0.elapsed().as_secs_f64().max(1e-6);
                let left = deadline
                    .saturating_duration_since(Instant::now())
                    .as_secs_f64();
                batch = (rate * left.min(1.0)).clamp(1.0, 1e6) as u32;
                seed += 1;
            }
        }
    }
    done.store(true, Ordering::Relaxed);
    let execs = execs.load(Ordering::Relaxed);
    eprintln!(
        "FUZZ-RESULT target={name} execs={execs} crashes={crashes} seconds={:.1}",
        start.elapsed().as_secs_f64()
    );
    assert_eq!(
        crashes, 0,
        "{name}: {crashes} failing run(s), see FUZZ-CRASH above"
    );
}
