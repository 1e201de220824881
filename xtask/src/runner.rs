//! Running QEMU: stream its serial output (optionally to our stdout), keep a
//! copy for the tests, and enforce a timeout.

use std::io::{Read, Write};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::process::{Child, Command, Stdio};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::{bail, process, Result};

/// How to run QEMU.
#[derive(Debug, Clone, Copy, Default)]
pub struct Options {
    /// Kill QEMU after this long.
    pub timeout: Option<Duration>,
    /// Copy QEMU's output to our stdout/stderr as it arrives.
    pub echo: bool,
}

/// How a QEMU run ended.
#[derive(Debug, Clone, Default)]
pub struct Outcome {
    /// QEMU's exit status, if it exited by itself.
    pub status: Option<i32>,
    /// The signal that ended QEMU, if one did (other than our timeout kill).
    pub signal: Option<i32>,
    /// Set when we killed QEMU because the timeout passed.
    pub timed_out: Option<Duration>,
    /// Everything the guest wrote to COM1.
    pub serial: String,
    /// QEMU's own messages (warnings, errors).
    pub stderr: String,
}

/// Starts QEMU with its output piped and no input; it dies with xtask.
pub fn spawn(mut cmd: Command) -> Result<std::process::Child> {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    // SAFETY: prctl is async-signal-safe and touches only the child being
    // created. It makes the kernel kill QEMU if we die first (a killed test
    // run must not leave emulators spinning).
    unsafe {
        cmd.pre_exec(|| {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            Ok(())
        });
    }
    process::echo(&cmd);
    match cmd.spawn() {
        Ok(child) => Ok(child),
        Err(e) => bail!("cannot start {}: {e}", cmd.get_program().to_string_lossy()),
    }
}

/// Runs QEMU to the end (or the timeout).
pub fn run(cmd: Command, options: Options) -> Result<Outcome> {
    run_with(cmd, options, false)
}

/// [`run`]; with `raw`, the serial console is echoed byte for byte, CR LF
/// left as it is (a guest's output, as bare QEMU shows it).
pub fn run_with(cmd: Command, options: Options, raw: bool) -> Result<Outcome> {
    let mut child = spawn(cmd)?;
    let stdout = child.stdout.take().expect("stdout is piped");
    let stderr = child.stderr.take().expect("stderr is piped");
    let serial = tee(
        stdout,
        options.echo.then(|| Box::new(std::io::stdout()) as _),
        raw,
    );
    let messages = tee(
        stderr,
        options.echo.then(|| Box::new(std::io::stderr()) as _),
        false,
    );

    let (status, timed_out) = wait(&mut child, options.timeout)?;
    let mut outcome = Outcome {
        status: status.and_then(|s| s.code()),
        signal: status.and_then(|s| s.signal()),
        timed_out,
        ..Outcome::default()
    };
    // The pipes close when QEMU is gone, which ends both threads.
    outcome.serial = String::from_utf8_lossy(&serial.join().unwrap_or_default()).into_owned();
    outcome.stderr = String::from_utf8_lossy(&messages.join().unwrap_or_default()).into_owned();
    Ok(outcome)
}

/// Waits for QEMU, killing it at the deadline. Returns its status, or `None`
/// and the timeout when we killed it.
fn wait(
    child: &mut Child,
    timeout: Option<Duration>,
) -> Result<(Option<std::process::ExitStatus>, Option<Duration>)> {
    let Some(timeout) = timeout else {
        return Ok((Some(child.wait()?), None));
    };
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(status) = child.try_wait()? {
            return Ok((Some(status), None));
        }
        if Instant::now() >= deadline {
            // Kill fails only if QEMU exited meanwhile; wait() reaps it either way.
            let _ = child.kill();
            child.wait()?;
            return Ok((None, Some(timeout)));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Turns the serial console's line ends (CR LF, and CR CR LF as QEMU's
/// serial port delivers the kernel's CR LF) into LF for our stdout, so that
/// `grep '^57 passed, 0 failed$'` matches. CRs are held back until the next
/// byte shows whether they end a line (a read may split them from their LF);
/// other CRs pass unchanged.
#[derive(Debug, Default)]
pub struct CrlfToLf {
    held_crs: usize,
}

impl CrlfToLf {
    /// The converted bytes of the next chunk of the stream.
    pub fn convert(&mut self, input: &[u8]) -> Vec<u8> {
        let mut out = Vec::with_capacity(input.len() + self.held_crs);
        for &byte in input {
            match byte {
                b'\r' => self.held_crs += 1,
                b'\n' => {
                    self.held_crs = 0;
                    out.push(b'\n');
                }
                _ => {
                    out.extend(std::iter::repeat_n(b'\r', self.held_crs));
                    self.held_crs = 0;
                    out.push(byte);
                }
            }
        }
        out
    }

    /// What is still held back when the stream ends.
    pub fn finish(&mut self) -> Vec<u8> {
        vec![b'\r'; std::mem::take(&mut self.held_crs)]
    }
}

/// Reads a pipe to its end on a thread, copying to `sink` as bytes arrive
/// (with LF line ends unless `raw`; the returned copy is unchanged).
fn tee(
    mut pipe: impl Read + Send + 'static,
    mut sink: Option<Box<dyn Write + Send>>,
    raw: bool,
) -> JoinHandle<Vec<u8>> {
    std::thread::spawn(move || {
        let mut all = Vec::new();
        let mut buffer = [0u8; 4096];
        let mut lf = CrlfToLf::default();
        // The console is best effort: a closed terminal must not stop the run.
        let mut echo = |bytes: &[u8]| {
            if let Some(sink) = sink.as_mut() {
                let _ = sink.write_all(bytes).and_then(|()| sink.flush());
            }
        };
        loop {
            match pipe.read(&mut buffer) {
                Ok(0) => break,
                Ok(n) => {
                    all.extend_from_slice(&buffer[..n]);
                    if raw {
                        echo(&buffer[..n]);
                    } else {
                        echo(&lf.convert(&buffer[..n]));
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(_) => break,
            }
        }
        echo(&lf.finish());
        all
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn captures_output_and_status() {
        let mut cmd = Command::new("sh");
        cmd.args(["-c", "echo serial; echo warning >&2; exit 33"]);
        let outcome = run(cmd, Options::default()).unwrap();
        assert_eq!(outcome.status, Some(33));
        assert_eq!(outcome.serial, "serial\n");
        assert_eq!(outcome.stderr, "warning\n");
        assert!(outcome.timed_out.is_none());
    }

    #[test]
    fn crlf_becomes_lf_even_split_across_reads() {
        let mut lf = CrlfToLf::default();
        let mut out = lf.convert(b"57 passed, 0 failed\r\nnext\r");
        out.extend(lf.convert(b"\nlast\r"));
        out.extend(lf.convert(b"x\r\r\ny\r"));
        out.extend(lf.convert(b"\r"));
        out.extend(lf.convert(b"\n"));
        out.extend(lf.finish());
        assert_eq!(out, b"57 passed, 0 failed\nnext\nlast\rx\ny\n");
        let mut lf = CrlfToLf::default();
        let mut out = lf.convert(b"end\r");
        out.extend(lf.finish());
        assert_eq!(out, b"end\r");
    }

    /// A sink whose bytes the test can read afterwards.
    #[derive(Clone, Default)]
    struct Shared(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

    impl Write for Shared {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(bytes);
            Ok(bytes.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn echo_is_lf_and_the_copy_is_raw() {
        let sink = Shared::default();
        // QEMU's serial port delivers the kernel's CR LF as CR CR LF.
        let serial: &[u8] = b"test a ... ok\r\r\n57 passed, 0 failed\r\n";
        let copy = tee(serial, Some(Box::new(sink.clone())), false)
            .join()
            .unwrap();
        assert_eq!(copy, serial);
        assert_eq!(
            *sink.0.lock().unwrap(),
            b"test a ... ok\n57 passed, 0 failed\n"
        );
    }

    #[test]
    fn raw_echo_is_the_bytes_as_they_came() {
        let sink = Shared::default();
        let serial: &[u8] = b"PASS: vmrun\r\nno newline\r";
        tee(serial, Some(Box::new(sink.clone())), true)
            .join()
            .unwrap();
        assert_eq!(*sink.0.lock().unwrap(), serial);
    }

    #[test]
    fn kills_at_the_timeout() {
        let mut cmd = Command::new("sleep");
        cmd.arg("30");
        let timeout = Duration::from_millis(200);
        let started = Instant::now();
        let outcome = run(
            cmd,
            Options {
                timeout: Some(timeout),
                echo: false,
            },
        )
        .unwrap();
        assert_eq!(outcome.timed_out, Some(timeout));
        assert_eq!(outcome.status, None);
        assert!(started.elapsed() < Duration::from_secs(10));
    }
}
