//! How `hanat` ends when it fails: one exit code per failure class, from
//! sysexits.h, so systemd and scripts can tell them apart. (Planned exits of
//! the daemon, a different thing, are [`crate::daemon::exit`].)

/// An exit code of `hanat`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Sysexit {
    /// Bad command line.
    Usage = 64,
    /// A required service (instance metadata, AWS) is unavailable.
    Unavailable = 69,
    /// Internal error.
    Software = 70,
    /// The kernel could not be configured (nft or ip missing, no permission).
    OsErr = 71,
    /// The daemon could not send its probes for `probe.unable_restart`
    /// (out of descriptors or memory): a restart is the remedy.
    TempFail = 75,
    /// Bad configuration file.
    Config = 78,
}

impl Sysexit {
    /// The number the process exits with.
    pub fn code(self) -> u8 {
        self as u8
    }
}

impl From<Sysexit> for std::process::ExitCode {
    fn from(e: Sysexit) -> Self {
        std::process::ExitCode::from(e.code())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_sysexits() {
        let table = [
            (Sysexit::Usage, 64),
            (Sysexit::Unavailable, 69),
            (Sysexit::Software, 70),
            (Sysexit::OsErr, 71),
            (Sysexit::TempFail, 75),
            (Sysexit::Config, 78),
        ];
        for (e, code) in table {
            assert_eq!(e.code(), code, "{e:?}");
        }
    }
}
