//! `mailauthd device profile`: the postmaster sets up a phone or mail program for someone —
//! an Apple profile, the Thunderbird for Android QR code, or the settings to type — each
//! carrying an app password issued for it.
//!
//! Everything that can refuse is checked before the app password is issued (the file, the
//! terminal, `[clients]`, the mailbox's protocols, the format itself with no secret in it,
//! the signing certificate), so a refusal leaves nothing behind. Should writing still fail,
//! the new app password is revoked: a secret nobody received must not keep working.

use std::fs::File;
use std::io::{IsTerminal, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use super::app_password::{expiry, issue};
use super::{require_mailbox, Ctx};
use crate::cli::{CliError, DeviceCommand, DeviceKind, ImageFormat};
use crate::clock::{format_time, Clock};
use crate::devices::apple::ProfileSigner;
use crate::devices::{android, apple, manual, ClientSettings, DeviceAccount, SetupError};
use crate::names::{Address, Protocols};
use crate::provision::{AppPasswordRequest, DuplicateName};
use crate::store::{AppPasswords, Mailbox};

pub(super) async fn run(ctx: &Ctx, command: DeviceCommand) -> Result<(), CliError> {
    match command {
        DeviceCommand::Profile {
            address,
            kind,
            protocols,
            name,
            expires,
            output,
            format,
        } => {
            let request = ProfileRequest {
                kind,
                format: image_format(kind, format)?,
                name: name.unwrap_or_else(|| default_name(kind).to_string()),
                output,
            };
            profile(ctx, &address, &protocols, expires.as_deref(), request).await
        }
    }
}

/// The app password's name when none is given: what the person sees in their list.
fn default_name(kind: DeviceKind) -> &'static str {
    match kind {
        DeviceKind::Apple => "iPhone / iPad / Mac",
        DeviceKind::Android => "Android",
        DeviceKind::Settings => "Mail program",
    }
}

/// `--format` belongs to the QR code; PNG unless SVG is asked for.
fn image_format(kind: DeviceKind, format: Option<ImageFormat>) -> Result<ImageFormat, CliError> {
    match (kind, format) {
        (DeviceKind::Android, f) => Ok(f.unwrap_or(ImageFormat::Png)),
        (_, None) => Ok(ImageFormat::Png),
        (_, Some(_)) => Err(CliError::usage(
            "--format is for --kind android (the QR code's picture)",
        )),
    }
}

struct ProfileRequest {
    kind: DeviceKind,
    format: ImageFormat,
    name: String,
    output: Option<PathBuf>,
}

impl ProfileRequest {
    /// Bytes a terminal would show as garbage: the (possibly signed) profile and the PNG.
    fn is_binary(&self) -> bool {
        match self.kind {
            DeviceKind::Apple => true,
            DeviceKind::Android => self.format == ImageFormat::Png,
            DeviceKind::Settings => false,
        }
    }
}

/// Where the profile goes: a file made for it, or standard output.
enum Destination {
    File(PathBuf, File),
    Stdout,
}

impl Destination {
    /// Creates the file now (mode 0600, never over an existing one), so a refusal comes
    /// before any app password exists.
    fn open(request: &ProfileRequest) -> Result<Self, CliError> {
        let Some(path) = &request.output else {
            if request.is_binary() && std::io::stdout().is_terminal() {
                return Err(CliError::usage(
                    "not writing a binary profile to the terminal: give --output FILE or redirect standard output",
                ));
            }
            return Ok(Destination::Stdout);
        };
        let file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(path)
            .map_err(|e| match e.kind() {
                std::io::ErrorKind::AlreadyExists => CliError::refused(format!(
                    "{} already exists: it is not overwritten (remove it or pick another --output)",
                    path.display()
                )),
                _ => CliError::refused(format!("cannot create {}: {e}", path.display())),
            })?;
        Ok(Destination::File(path.clone(), file))
    }

    fn write(&mut self, bytes: &[u8]) -> Result<(), CliError> {
        match self {
            Destination::File(path, file) => file
                .write_all(bytes)
                .and_then(|()| file.sync_all())
                .map_err(|e| CliError::refused(format!("cannot write {}: {e}", path.display()))),
            Destination::Stdout => {
                let mut out = std::io::stdout().lock();
                out.write_all(bytes)
                    .and_then(|()| out.flush())
                    .map_err(|e| CliError::refused(format!("cannot write standard output: {e}")))
            }
        }
    }

    /// Removes a file this command created, after a refusal.
    fn discard(self) {
        if let Destination::File(path, file) = self {
            drop(file);
            let _ = std::fs::remove_file(path);
        }
    }
}

/// The `[clients]` servers, or why device setup is off.
fn client_settings(ctx: &Ctx) -> Result<&ClientSettings, CliError> {
    ctx.config.clients.as_ref().ok_or_else(|| {
        CliError::refused(
            "device setup is off: no server host is configured for mail clients \
             (add a [clients] section with host = \"mail.example.org\", or set web.mail_host)",
        )
    })
}

async fn profile(
    ctx: &Ctx,
    address: &str,
    protocols: &str,
    expires: Option<&str>,
    request: ProfileRequest,
) -> Result<(), CliError> {
    let address = Address::parse(address)?;
    let wanted = Protocols::parse_list(protocols)?;
    if wanted == Protocols::NONE {
        return Err(CliError::usage(
            "choose at least one protocol: --protocols imap,smtp",
        ));
    }
    let expires_at = expiry(ctx, expires)?;
    let settings = client_settings(ctx)?;
    let mut destination = Destination::open(&request)?;
    let result = issue_and_write(
        ctx,
        settings,
        &address,
        wanted,
        expires_at,
        &request,
        &mut destination,
    )
    .await;
    match result {
        Ok(()) => {
            if let Destination::File(path, _) = &destination {
                eprintln!("mailauthd: wrote {} (mode 0600)", path.display());
            }
            Ok(())
        }
        Err(e) => {
            destination.discard();
            Err(e)
        }
    }
}

fn setup_refused(e: SetupError) -> CliError {
    CliError::refused(e.to_string())
}

/// Refuses what no app password could fix: a protocol the mailbox does not allow or
/// clients are not told of, and a format that cannot be made for these protocols.
fn check_before_issuing(
    settings: &ClientSettings,
    mailbox: &Mailbox,
    wanted: Protocols,
    request: &ProfileRequest,
    site: &str,
) -> Result<(), CliError> {
    if mailbox.protocols == Protocols::NONE {
        return Err(CliError::refused(format!(
            "the mailbox {} allows no protocol: allow some with `mailauthd mailbox set {} --protocols imap,smtp` first",
            mailbox.address, mailbox.address
        )));
    }
    if let Some(p) = wanted.iter().find(|p| !mailbox.protocols.contains(*p)) {
        return Err(CliError::refused(format!(
            "the mailbox {} does not allow {} (it allows {}): an app password for it could not work",
            mailbox.address,
            p.name().to_uppercase(),
            mailbox.protocols
        )));
    }
    if let Some(p) = wanted.iter().find(|p| settings.server(*p).is_none()) {
        return Err(setup_refused(SetupError::NotOffered(p)));
    }
    let template = DeviceAccount {
        address: &mailbox.address,
        display_name: &mailbox.display_name,
        password: None,
        protocols: wanted,
    };
    match request.kind {
        DeviceKind::Apple => apple::profile(settings, &template, site)
            .map(drop)
            .map_err(setup_refused),
        DeviceKind::Android => android::payload(settings, &template)
            .map(drop)
            .map_err(setup_refused),
        DeviceKind::Settings => Ok(()),
    }
}

/// The signer of Apple profiles, when `[clients]` names a certificate.
fn signer(settings: &ClientSettings) -> Result<Option<(ProfileSigner, &Path)>, CliError> {
    let Some((certificate, key)) = &settings.profile_signing else {
        return Ok(None);
    };
    let signer = ProfileSigner::load(certificate, key).map_err(|e| {
        CliError::refused(format!(
            "cannot sign profiles with clients.profile_certificate {} and clients.profile_key {}: {e}",
            certificate.display(),
            key.display()
        ))
    })?;
    Ok(Some((signer, certificate.as_path())))
}

/// The bytes for the device, with the secret in them.
fn render(
    settings: &ClientSettings,
    account: &DeviceAccount<'_>,
    request: &ProfileRequest,
    site: &str,
    signer: Option<&ProfileSigner>,
    json: bool,
) -> Result<Vec<u8>, CliError> {
    Ok(match request.kind {
        DeviceKind::Apple => {
            let profile = apple::profile(settings, account, site).map_err(setup_refused)?;
            match signer {
                Some(s) => s
                    .sign(&profile)
                    .map_err(|e| CliError::refused(format!("cannot sign the profile: {e}")))?,
                None => profile,
            }
        }
        DeviceKind::Android => {
            let payload = android::payload(settings, account).map_err(setup_refused)?;
            let image = match request.format {
                ImageFormat::Png => android::png(&payload),
                ImageFormat::Svg => android::svg(&payload).map(String::into_bytes),
            };
            image.map_err(|e| CliError::refused(e.to_string()))?
        }
        DeviceKind::Settings if json => {
            let mut text = manual::json(settings, account).to_string();
            text.push('\n');
            text.into_bytes()
        }
        DeviceKind::Settings => manual::text(settings, account).into_bytes(),
    })
}

async fn issue_and_write(
    ctx: &Ctx,
    settings: &ClientSettings,
    address: &Address,
    wanted: Protocols,
    expires_at: Option<crate::clock::UnixTime>,
    request: &ProfileRequest,
    destination: &mut Destination,
) -> Result<(), CliError> {
    let mailbox = require_mailbox(ctx, address).await?;
    let site = match &ctx.config.web {
        Some(web) => web.title.clone(),
        None => mailbox.domain.clone(),
    };
    check_before_issuing(settings, &mailbox, wanted, request, &site)?;
    let signer = match request.kind {
        DeviceKind::Apple => signer(settings)?,
        _ => None,
    };
    let issued = issue(
        ctx,
        AppPasswordRequest {
            mailbox: &mailbox.address,
            name: &request.name,
            protocols: wanted,
            allowed: Some(mailbox.protocols),
            networks: Vec::new(),
            expires_at,
            duplicate_name: DuplicateName::Number,
            now: ctx.clock.now(),
        },
    )
    .await?;
    let secret = issued.shown();
    let account = DeviceAccount {
        address: &mailbox.address,
        display_name: &mailbox.display_name,
        password: Some(&secret),
        protocols: wanted,
    };
    let written = render(
        settings,
        &account,
        request,
        &site,
        signer.as_ref().map(|(s, _)| s),
        ctx.out.is_json(),
    )
    .and_then(|bytes| destination.write(&bytes));
    if let Err(e) = written {
        // Nobody received the secret: it must not keep working.
        if let Err(revoke) = ctx
            .store
            .delete_app_password(&mailbox.address, issued.id)
            .await
        {
            eprintln!(
                "mailauthd: could not revoke app password {} again ({revoke}): revoke it with \
                 mailauthd app-password revoke {} {}",
                issued.id, mailbox.address, issued.id
            );
        }
        return Err(e);
    }
    eprintln!(
        "mailauthd: app password {} ({}) for {}: {wanted}; expires {}; revoke with: \
         mailauthd app-password revoke {} {}",
        issued.id,
        issued.name,
        mailbox.address,
        expires_at
            .map(format_time)
            .unwrap_or_else(|| "never".into()),
        mailbox.address,
        issued.id
    );
    if request.kind == DeviceKind::Apple {
        match &signer {
            Some((_, certificate)) => eprintln!(
                "mailauthd: the profile is signed with {}",
                certificate.display()
            ),
            None => eprintln!(
                "mailauthd: the profile is NOT signed (devices show it as unverified): set \
                 clients.profile_certificate and clients.profile_key to sign it"
            ),
        }
    }
    if mailbox.state != crate::store::MailboxState::Active {
        eprintln!(
            "mailauthd: note: the mailbox is not active; its logins stay refused until it is"
        );
    }
    Ok(())
}
