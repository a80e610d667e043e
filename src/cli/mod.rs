//! The command line a postmaster types: clap definitions and dispatch.

mod admin;
mod auth_test;
mod idp_check;
mod idp_test;
mod output;
mod policy_test;
mod secrets;
mod throttle;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};

use crate::config::{Config, ConfigErrors};
pub use output::Output;

const EXIT_CODES: &str = "\
Exit codes:
  0  success (for `auth test`: the login was accepted)
  1  refused or failed (the message says why; nothing was changed)
  2  usage error (unknown option, malformed value)
  3  temporary failure (database unreachable, hash pool full): try again later
`policy test` maps its actions onto these codes; see `mailauthd policy test --help`.";

#[derive(Debug, Parser)]
#[command(
    name = "mailauthd",
    version,
    about = "Authentication, sender policy and OIDC mailbox provisioning for Dovecot and Postfix",
    after_help = EXIT_CODES,
    propagate_version = true
)]
pub struct Cli {
    /// Config file [default: $MAILAUTHD_CONFIG, else /etc/mailauthd/mailauthd.toml]
    #[arg(long, global = true, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Print machine-readable JSON instead of tables
    #[arg(long, global = true)]
    pub json: bool,
    /// Log lines as text or JSON, overriding [log] format
    #[arg(long, global = true, value_name = "FORMAT", value_parser = ["text", "json"])]
    pub log_format: Option<String>,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the daemon
    Serve,
    /// Apply database migrations and exit
    Migrate,
    /// Check the config file
    #[command(subcommand)]
    Config(ConfigCommand),
    /// Domains this server serves, and their limits
    #[command(subcommand)]
    Domain(DomainCommand),
    /// Alias domains: another name for a served domain
    #[command(subcommand, name = "alias-domain")]
    AliasDomain(AliasDomainCommand),
    /// Mailboxes
    #[command(subcommand)]
    Mailbox(MailboxCommand),
    /// Mailbox templates (quota, protocols, state) chosen by an identity-provider claim
    #[command(subcommand)]
    Template(TemplateCommand),
    /// Claim value -> template mappings, tried in order, and the default template
    #[command(subcommand)]
    Mapping(MappingCommand),
    /// App passwords for mail clients
    #[command(subcommand, name = "app-password")]
    AppPassword(AppPasswordCommand),
    /// Set up a phone or mail program: a profile with a fresh app password
    #[command(subcommand)]
    Device(DeviceCommand),
    /// Aliases: addresses delivered to (and sendable by) other mailboxes
    #[command(subcommand)]
    Alias(AliasCommand),
    /// Explicit grants to send as other addresses
    #[command(subcommand, name = "send-as")]
    SendAs(SendAsCommand),
    /// Test a login like a mail server would ask for it
    #[command(subcommand)]
    Auth(AuthCommand),
    /// The OpenID Connect identity provider configured in [oidc]
    #[command(subcommand)]
    Idp(IdpCommand),
    /// The Postfix policy service (sender ownership, access re-checks, sending limits)
    #[command(subcommand)]
    Policy(PolicyCommand),
    /// Brute-force delays and blocks held by the running daemon
    #[command(subcommand)]
    Throttle(ThrottleCommand),
}

#[derive(Debug, Subcommand)]
pub enum IdpCommand {
    /// Check discovery, TLS, keys, client credentials and UserInfo, step by step
    #[command(
        after_help = "Each step prints ✓ or ✗ with a hint. The token-endpoint step sends an invented code: \
                      invalid_grant proves the client id and secret were accepted, invalid_client that they were not. \
                      Exit code 0 when every step passed, 1 otherwise."
    )]
    Test,
    /// Ask the provider now whether it still knows each linked mailbox's person
    #[command(after_help = IDP_CHECK_HELP)]
    Check {
        /// Only this mailbox
        address: Option<String>,
        /// Decide and print, but suspend nobody and record nothing (a refresh token the
        /// provider rotates is still kept, as the old one may no longer work)
        #[arg(long)]
        dry_run: bool,
    },
}

const IDP_CHECK_HELP: &str = "\
For each mailbox linked to a provider account, its stored refresh token is refreshed at the
provider. A mailbox the provider no longer knows (invalid_grant: account disabled or deleted,
consent revoked) is suspended for mail logins: its app passwords are refused with reason
identity_revoked and its web sessions end. Nothing is deleted and mail is still delivered; the
person's next web sign-in lifts the suspension.

One line per mailbox: ADDRESS<TAB>ANSWER<TAB>CHANGE, then a summary line `checked N: ...`.
  ANSWER  ok, invalid_grant, invalid_client, unreachable, provider_error, no_refresh_token
  CHANGE  none, suspended, still_suspended, withheld (the brake held, or --dry-run)

The brake: if the provider is unreachable or answers with an error, refuses our client
(invalid_client), or refuses more than max(1, checked x [oidc] liveness_max_suspend_percent / 100)
mailboxes, nobody is suspended.

Exit codes:
  0  the answers were applied (with --dry-run: would be)
  1  the brake held, or the provider refused our client (a configuration problem): nobody suspended
  2  usage: no [oidc] section, or ADDRESS is not a mailbox linked to the provider
  3  the provider unreachable, timed out or answering 5xx, the store unavailable, or another
     check running: nobody suspended; try again later";

#[derive(Debug, Subcommand)]
pub enum ThrottleCommand {
    /// Networks and accounts with counted failures or a block
    List,
    /// Lift blocks: an IP, a CIDR network, an account, or everything when none is given
    Clear { filter: Option<String> },
}

#[derive(Debug, Subcommand)]
pub enum ConfigCommand {
    /// Report every problem in the config file at once
    Check,
}

#[derive(Debug, Args)]
pub struct DomainLimits {
    /// Most mailboxes the domain may have ("unlimited" to lift)
    #[arg(long, value_name = "N")]
    pub max_mailboxes: Option<String>,
    /// Largest quota one mailbox may have, e.g. 10G ("unlimited" to lift)
    #[arg(long, value_name = "SIZE")]
    pub max_quota: Option<String>,
    /// Total of all mailbox quotas, e.g. 1T ("unlimited" to lift)
    #[arg(long, value_name = "SIZE")]
    pub quota: Option<String>,
}

#[derive(Debug, Subcommand)]
pub enum DomainCommand {
    /// Add a domain
    Add {
        name: String,
        #[command(flatten)]
        limits: DomainLimits,
        /// Create it disabled
        #[arg(long)]
        inactive: bool,
    },
    /// List domains with their usage
    List,
    /// Show one domain
    Show { name: String },
    /// Change limits or enable/disable
    Set {
        name: String,
        #[command(flatten)]
        limits: DomainLimits,
        /// true or false
        #[arg(long, value_name = "BOOL")]
        active: Option<bool>,
    },
    /// Remove a domain that has no mailboxes
    Remove { name: String },
}

#[derive(Debug, Subcommand)]
pub enum AliasDomainCommand {
    /// alias.example becomes another name for target.example
    Add {
        alias: String,
        target: String,
    },
    List,
    Remove {
        alias: String,
    },
}

/// What a template decides for its mailboxes and the postmaster may also set on one.
#[derive(Debug, Args)]
pub struct SettingFields {
    /// Mailbox quota, e.g. 5G (0 = unlimited)
    #[arg(long, value_name = "SIZE")]
    pub quota: Option<String>,
    /// Allowed protocols: imap,pop3,sieve,smtp (or all, none)
    #[arg(long, value_name = "LIST")]
    pub protocols: Option<String>,
    /// 1 = active, 0 = disabled, 2 = receives mail but may not log in
    #[arg(long, value_name = "STATE")]
    pub active: Option<String>,
}

#[derive(Debug, Args)]
pub struct MailboxFields {
    #[command(flatten)]
    pub settings: SettingFields,
    /// Display name
    #[arg(long, value_name = "NAME")]
    pub name: Option<String>,
    /// Apply this template (quota, protocols, state); explicit options override it.
    /// Quota, protocols and state given here are kept when a sign-in re-applies a
    /// template; with `mailbox set`, --template hands all three back to the template
    #[arg(long, value_name = "NAME")]
    pub template: Option<String>,
}

#[derive(Debug, Subcommand)]
pub enum MailboxCommand {
    /// Add a mailbox (the password is read from stdin or asked for, never from arguments)
    Add {
        address: String,
        /// Read the password from standard input (one line)
        #[arg(long)]
        password_stdin: bool,
        /// Create without a password (for mailboxes that sign in through the identity provider)
        #[arg(long, conflicts_with = "password_stdin")]
        no_password: bool,
        /// Read an existing Dovecot-style hash ({BLF-CRYPT}…, {SHA512-CRYPT}…) from standard input
        #[arg(long, conflicts_with_all = ["password_stdin", "no_password"])]
        password_hash_stdin: bool,
        /// local (own password) or oidc (identity provider; mail clients use app passwords)
        #[arg(long, value_name = "SOURCE", default_value = "local")]
        authsource: String,
        #[command(flatten)]
        fields: MailboxFields,
    },
    /// List mailboxes, optionally of one domain
    List { domain: Option<String> },
    /// Show one mailbox
    Show { address: String },
    /// Change a mailbox. Quota, protocols and state set here stay as set: a sign-in that
    /// re-applies a template keeps them, until --template or --reset
    Set {
        address: String,
        /// Set a new password, read from standard input
        #[arg(long)]
        password_stdin: bool,
        /// Ask for a new password on the terminal
        #[arg(long, conflicts_with = "password_stdin")]
        password_prompt: bool,
        /// Re-apply the mailbox's own template and forget the quota, protocols and state
        /// set by hand (the same as --template with the template it follows)
        #[arg(long, conflicts_with = "template")]
        reset: bool,
        #[command(flatten)]
        fields: MailboxFields,
    },
    /// Import mailboxes from a Dovecot passwd-file (user:{SCHEME}hash:…), keeping their hashes
    Import {
        /// The passwd-file; `-` reads standard input
        file: PathBuf,
        /// Check every line and report, but create nothing
        #[arg(long)]
        dry_run: bool,
        /// Apply this template to every imported mailbox
        #[arg(long, value_name = "NAME")]
        template: Option<String>,
    },
    /// Switch between local and oidc; the stored password is kept either way
    #[command(name = "set-authsource")]
    SetAuthsource { address: String, source: String },
    /// Forget the identity-provider account a mailbox is bound to; the next sign-in with
    /// its address binds it again (after an account was re-created at the provider, or
    /// moved to another address)
    Unlink { address: String },
    /// Remove a mailbox with its app passwords and send-as grants
    Remove { address: String },
}

#[derive(Debug, Args)]
pub struct TemplateFields {
    #[command(flatten)]
    pub settings: SettingFields,
    /// Sending limits for its mailboxes: WINDOW:MESSAGES:RECIPIENTS items, e.g.
    /// 1h:100:1000,1d:500:- ("-" = uncapped); "none" for no limits; "default" for the
    /// [policy] limits of the config file (what a template starts with)
    #[arg(long, value_name = "LIMITS")]
    pub send_limits: Option<String>,
}

#[derive(Debug, Subcommand)]
pub enum TemplateCommand {
    /// Add a template (defaults: unlimited quota, all protocols, active)
    Add {
        name: String,
        #[command(flatten)]
        fields: TemplateFields,
    },
    List,
    Show {
        name: String,
    },
    /// Change a template; mailboxes follow on their next sign-in
    Set {
        name: String,
        #[command(flatten)]
        fields: TemplateFields,
    },
    Remove {
        name: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum MappingCommand {
    /// Map a claim value to a template (appended last unless --position is given)
    Add {
        value: String,
        template: String,
        #[arg(long)]
        position: Option<i64>,
    },
    /// List mappings in the order they are tried
    List,
    Remove {
        value: String,
    },
    /// Set the template used when no mapping matches (or --clear it)
    Default {
        #[arg(required_unless_present = "clear")]
        template: Option<String>,
        #[arg(long, conflicts_with = "template")]
        clear: bool,
    },
}

#[derive(Debug, Subcommand)]
pub enum AppPasswordCommand {
    /// Create an app password; the secret is printed once
    Create {
        address: String,
        #[arg(long)]
        name: String,
        /// imap,pop3,sieve,smtp (or all)
        #[arg(long, value_name = "LIST")]
        protocols: String,
        /// Day it stops working (YYYY-MM-DD, from 00:00 UTC)
        #[arg(long, value_name = "DATE")]
        expires: Option<String>,
        /// Only from these networks, e.g. 192.0.2.0/24,2001:db8::/32
        #[arg(long, value_name = "CIDRS")]
        networks: Option<String>,
    },
    /// List app passwords with their last use
    List { address: String },
    /// Revoke an app password; the next login with it fails
    Revoke { address: String, id: i64 },
}

const DEVICE_PROFILE_HELP: &str = "\
Issues an app password for the protocols given (the mailbox must allow them) and writes it
into what the device reads:

  apple     an Apple configuration profile (.mobileconfig) for iPhone, iPad and Mac,
            signed when [clients] has profile_certificate and profile_key
  android   the QR code Thunderbird for Android scans (PNG, or SVG with --format svg)
  settings  the servers, user name and password to type in (JSON with --json)

The servers come from [clients] (or web.mail_host on the standard ports). The password is
inside the output and shown nowhere else; the app password's id and name go to standard
error. --output files are created with mode 0600 and never overwritten. A profile or PNG is
not written to a terminal: give --output, or redirect standard output.

Examples:
  mailauthd device profile alice@example.org --kind apple --protocols imap,smtp \\
    --output alice.mobileconfig
  mailauthd device profile alice@example.org --kind android --protocols imap,smtp \\
    --output alice.png
  mailauthd --json device profile alice@example.org --kind settings --protocols imap,smtp

Revoke it like any other: mailauthd app-password revoke ADDRESS ID

Exit codes:
  0  written
  1  refused (no such mailbox, a protocol it does not allow, device setup off, the file
     exists); no app password was kept
  2  usage error (unknown option, malformed value)
  3  temporary failure (database unreachable): try again later";

/// What `device profile` writes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum DeviceKind {
    /// Apple configuration profile (.mobileconfig) for iPhone, iPad and Mac
    Apple,
    /// QR code for Thunderbird for Android
    Android,
    /// The settings to type into any other mail program
    Settings,
}

/// The picture format of the Android QR code.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum ImageFormat {
    Png,
    Svg,
}

#[derive(Debug, Subcommand)]
pub enum DeviceCommand {
    /// Write a device profile carrying a new app password
    #[command(after_help = DEVICE_PROFILE_HELP)]
    Profile {
        address: String,
        /// apple, android or settings
        #[arg(long, value_enum)]
        kind: DeviceKind,
        /// What the app password may do: imap,pop3,sieve,smtp (each allowed by the mailbox)
        #[arg(long, value_name = "LIST")]
        protocols: String,
        /// The app password's name [default: after the kind, e.g. "Android"; numbered
        /// " (2)" when taken]
        #[arg(long, value_name = "NAME")]
        name: Option<String>,
        /// Day the app password stops working (YYYY-MM-DD, from 00:00 UTC)
        #[arg(long, value_name = "DATE")]
        expires: Option<String>,
        /// Write to this new file (mode 0600) instead of standard output
        #[arg(long, value_name = "FILE")]
        output: Option<PathBuf>,
        /// The QR code's format, for --kind android [default: png]
        #[arg(long, value_enum, value_name = "FORMAT")]
        format: Option<ImageFormat>,
    },
}

#[derive(Debug, Subcommand)]
pub enum AliasCommand {
    /// Deliver ADDRESS to one or more mailboxes (comma-separated)
    Add {
        address: String,
        targets: String,
    },
    List {
        domain: Option<String>,
    },
    /// Remove an alias, or only one of its targets
    Remove {
        address: String,
        target: Option<String>,
    },
}

#[derive(Debug, Subcommand)]
pub enum SendAsCommand {
    /// Let MAILBOX send as PATTERN: an address, @domain, or * (anything)
    Grant {
        mailbox: String,
        pattern: String,
    },
    List {
        mailbox: Option<String>,
    },
    Revoke {
        mailbox: String,
        pattern: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum AuthCommand {
    /// Run one login through the decision core; the secret is read from stdin
    Test {
        address: String,
        /// imap, pop3, sieve, smtp, submission, …
        #[arg(long, default_value = "imap")]
        service: String,
        /// The client address to test with
        #[arg(long, value_name = "IP")]
        rip: Option<std::net::IpAddr>,
        /// Treat the connection as TLS-secured
        #[arg(long)]
        secured: bool,
    },
}

const POLICY_TEST_HELP: &str = "\
Input: the attributes of one policy request as Postfix sends them, one name=value per
line; request=smtpd_access_policy is assumed when absent, and the closing empty line is
optional. For example:

  printf 'protocol_state=RCPT\\nsasl_username=alice@example.org\\nsender=sales@example.org\\n' \\
    | mailauthd policy test

Prints the action Postfix would get and the rule that decided. Sending limits start from
zero here: their counters live in the daemon's memory.

Exit codes:
  0  DUNNO (nothing against the request; Postfix's other restrictions decide)
  1  REJECT or DEFER_IF_PERMIT (refused or deferred), or the store failed
  2  usage error (malformed request, unknown option)
  3  temporary failure (database unreachable): the daemon would close the connection";

#[derive(Debug, Subcommand)]
pub enum PolicyCommand {
    /// Decide one policy request read from standard input, like the daemon would
    #[command(after_help = POLICY_TEST_HELP)]
    Test,
}

/// Why a command did not succeed, and which exit code says so.
#[derive(Debug)]
pub struct CliError {
    pub code: u8,
    pub message: String,
}

impl CliError {
    pub fn refused(message: impl Into<String>) -> Self {
        CliError {
            code: 1,
            message: message.into(),
        }
    }

    pub fn usage(message: impl Into<String>) -> Self {
        CliError {
            code: 2,
            message: message.into(),
        }
    }

    pub fn temporary(message: impl Into<String>) -> Self {
        CliError {
            code: 3,
            message: message.into(),
        }
    }
}

impl From<crate::store::StoreError> for CliError {
    fn from(e: crate::store::StoreError) -> Self {
        if e.is_unavailable() {
            CliError::temporary(e.to_string())
        } else {
            CliError::refused(e.to_string())
        }
    }
}

impl From<crate::provision::ProvisionError> for CliError {
    fn from(e: crate::provision::ProvisionError) -> Self {
        match e {
            crate::provision::ProvisionError::Store(s) => s.into(),
            other => CliError::refused(other.to_string()),
        }
    }
}

impl From<crate::daemon::ServeError> for CliError {
    fn from(e: crate::daemon::ServeError) -> Self {
        if e.is_temporary() {
            CliError::temporary(e.to_string())
        } else {
            CliError::refused(e.to_string())
        }
    }
}

impl From<crate::names::NameError> for CliError {
    fn from(e: crate::names::NameError) -> Self {
        CliError::usage(e.to_string())
    }
}

impl From<crate::size::SizeError> for CliError {
    fn from(e: crate::size::SizeError) -> Self {
        CliError::usage(e.to_string())
    }
}

/// Runs a parsed command line; `main` only reads the config, sets up logging and the
/// runtime. `serve` runs with `config`, the file as `main` read it; the other commands
/// read the file themselves, as the state directory's owner `main` has become.
pub async fn run(
    cli: Cli,
    config: Result<Config, ConfigErrors>,
    log: crate::logging::LogControl,
) -> ExitCode {
    let out = Output::new(cli.json);
    let result = match cli.command {
        Command::Serve => match config {
            Ok(config) => crate::daemon::serve(config, log)
                .await
                .map_err(CliError::from),
            Err(e) => Err(CliError::usage(e.to_string().trim_end().to_string())),
        },
        Command::Config(ConfigCommand::Check) => admin::config_check(cli.config.as_deref(), &out),
        Command::Auth(AuthCommand::Test {
            address,
            service,
            rip,
            secured,
        }) => {
            auth_test::run(
                cli.config.as_deref(),
                &out,
                &address,
                &service,
                rip,
                secured,
            )
            .await
        }
        Command::Idp(IdpCommand::Test) => idp_test::run(cli.config.as_deref(), &out).await,
        Command::Idp(IdpCommand::Check { address, dry_run }) => {
            idp_check::run(cli.config.as_deref(), &out, address.as_deref(), dry_run).await
        }
        Command::Throttle(ThrottleCommand::List) => {
            throttle::run(
                cli.config.as_deref(),
                &out,
                crate::server::control_conn::ControlRequest::ThrottleList,
            )
            .await
        }
        Command::Throttle(ThrottleCommand::Clear { filter }) => {
            let request = crate::server::control_conn::ControlRequest::ThrottleClear { filter };
            throttle::run(cli.config.as_deref(), &out, request).await
        }
        Command::Policy(PolicyCommand::Test) => policy_test::run(cli.config.as_deref(), &out).await,
        command => admin::run(cli.config.as_deref(), &out, command).await,
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            if !e.message.is_empty() {
                eprintln!("mailauthd: {}", e.message);
            }
            ExitCode::from(e.code)
        }
    }
}

impl From<crate::provision::IssueError> for CliError {
    fn from(e: crate::provision::IssueError) -> Self {
        use crate::provision::{AppPasswordRefusal as R, IssueError};
        match e {
            IssueError::Refused(why @ (R::BadName | R::NoProtocols | R::PastExpiry)) => {
                CliError::usage(why.to_string())
            }
            IssueError::Store(s) => s.into(),
            other => CliError::refused(other.to_string()),
        }
    }
}
