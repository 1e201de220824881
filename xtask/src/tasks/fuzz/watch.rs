//! Running QEMU for the fuzzer with hang detection: a console silent for
//! too long ends the run.

use std::io::{Read, Write};
use std::os::unix::process::ExitStatusExt;
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::{runner, Result};

/// Runs QEMU like [`runner::run`] with the console echoed, killing it at
/// `timeout` or when its console stays silent for `idle` (a hang).
pub(super) fn run_watched(
    cmd: Command,
    timeout: Duration,
    idle: Duration,
) -> Result<runner::Outcome> {
    let mut child = runner::spawn(cmd)?;
    let last = Arc::new(Mutex::new(Instant::now()));
    let pump = |mut pipe: Box<dyn Read + Send>, mut sink: Box<dyn Write + Send>| {
        let last = Arc::clone(&last);
        std::thread::spawn(move || {
            let (mut all, mut buf) = (Vec::new(), [0u8; 4096]);
            let mut lf = runner::CrlfToLf::default();
            while let Ok(n @ 1..) = pipe.read(&mut buf) {
                all.extend_from_slice(&buf[..n]);
                // The console is best effort.
                let _ = sink
                    .write_all(&lf.convert(&buf[..n]))
                    .and_then(|()| sink.flush());
                *last.lock().unwrap_or_else(|e| e.into_inner()) = Instant::now();
            }
            let _ = sink.write_all(&lf.finish()).and_then(|()| sink.flush());
            all
        })
    };
    let out = pump(
        Box::new(child.stdout.take().expect("piped")),
        Box::new(std::io::stdout()),
    );
    let err = pump(
        Box::new(child.stderr.take().expect("piped")),
        Box::new(std::io::stderr()),
    );
    let started = Instant::now();
    let (status, timed_out) = loop {
        if let Some(status) = child.try_wait()? {
            break (Some(status), None);
        }
        let silent = last.lock().unwrap_or_else(|e| e.into_inner()).elapsed();
        let waited = started.elapsed();
        if waited >= timeout || silent >= idle {
            // Kill fails only if QEMU exited meanwhile; wait reaps it anyway.
            let _ = child.kill();
            child.wait()?;
            break (None, Some(if waited >= timeout { timeout } else { silent }));
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let text = |h: std::thread::JoinHandle<Vec<u8>>| {
        String::from_utf8_lossy(&h.join().unwrap_or_default()).into_owned()
    };
    Ok(runner::Outcome {
        status: status.and_then(|s| s.code()),
        signal: status.and_then(|s| s.signal()),
        timed_out,
        serial: text(out),
        stderr: text(err),
    })
}
