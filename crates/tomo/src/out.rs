//! Standard output for the CLI ([`outln!`], [`out!`]): a closed pipe is the reader saying it
//! has seen enough, so the process exits at once with status 0 and says nothing, as `docker`
//! and the usual Unix tools do (Rust ignores `SIGPIPE`, so `println!` would panic instead).

use std::io::Write as _;

/// Writes `args` and a newline to standard output.
pub fn line(args: std::fmt::Arguments<'_>) {
    let mut o = std::io::stdout().lock();
    let written = o.write_fmt(args).and_then(|()| o.write_all(b"\n"));
    done_if_closed(written);
}

/// Writes `args` to standard output.
pub fn text(args: std::fmt::Arguments<'_>) {
    let written = std::io::stdout().lock().write_fmt(args);
    done_if_closed(written);
}

/// Exits quietly when the reader is gone; other errors (a full disk behind a redirection) are
/// not this module's to judge and are ignored like `print!` would not.
pub fn done_if_closed(r: std::io::Result<()>) {
    if let Err(e) = r
        && e.kind() == std::io::ErrorKind::BrokenPipe
    {
        std::process::exit(0);
    }
}
