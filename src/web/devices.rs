//! "Set up a device": a signed-in person picks the kind of device and what it may do, gets
//! a fresh app password scoped to that, and the device's setup in one step — an Apple
//! configuration profile to download, a QR code for Thunderbird for Android, or the
//! settings to type in.
//!
//! The form posts, the server issues the app password and answers 303 to a result page
//! (POST-redirect-GET), so a reload never makes a second app password. The result lives
//! in memory ([`Setups`]): bounded, expiring, keyed by the SHA-256 of a random token in the
//! URL, bound to the mailbox that made it, and shown once — the secret is dropped when the
//! page is first rendered. An Apple profile's download is a second one-time token, good
//! for ten minutes. Neither token nor secret is logged.

use std::collections::{HashMap, VecDeque};
use std::path::Path;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use axum::extract::{FromRequestParts, Path as UrlPath, State};
use axum::http::request::Parts;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use sha2::{Digest, Sha256};

use super::account::{self, checked_protocols, expiry_date, FormResult, SignedInForm, NOT_A_DATE};
use super::device_pages::{self, DeviceForm};
use super::pages::Notice;
use super::session::{random_token, SignedInUser};
use super::{field, html_response, not_found, redirect, AppState, WebError, WebState};
use crate::clock::Clock;
use crate::devices::apple::ProfileSigner;
use crate::devices::{android, apple, manual, ClientSettings, DeviceAccount, SetupError};
use crate::names::Protocols;
use crate::provision::{issue_app_password, AppPasswordRequest, DuplicateName, IssueError};
use crate::secret::Secret;
use crate::store::StoreError;

/// Results waiting to be shown (and downloads waiting to be fetched) at most; the oldest
/// goes first. Bounds memory whatever signed-in people do.
const MAX_SETUPS: usize = 1000;
/// What one mailbox may hold of those (a result and its download are two): its own oldest
/// goes first, so one person setting up device after device never pushes out another's.
const MAX_SETUPS_PER_MAILBOX: usize = 10;
/// A result page not opened by then is gone (its app password stays; it can be revoked).
const RESULT_LIFETIME: Duration = Duration::from_secs(30 * 60);
/// An Apple profile carries the password: fetched once, soon. Counted from when its
/// result page is shown, so the link on that page always has its full time; until then
/// it lives as long as the result (only that page reveals its token).
const PROFILE_LIFETIME: Duration = Duration::from_secs(10 * 60);

/// The kinds of device the form offers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Apple,
    Android,
    Other,
}

impl Kind {
    pub const ALL: [Kind; 3] = [Kind::Apple, Kind::Android, Kind::Other];

    pub fn name(self) -> &'static str {
        match self {
            Kind::Apple => "apple",
            Kind::Android => "android",
            Kind::Other => "other",
        }
    }

    pub fn label(self) -> &'static str {
        match self {
            Kind::Apple => "iPhone, iPad or Mac",
            Kind::Android => "Android (Thunderbird)",
            Kind::Other => "Another mail program",
        }
    }

    /// The app password's name when the person gives none; numbered when taken.
    pub fn default_name(self) -> &'static str {
        match self {
            Kind::Apple => "iPhone / iPad / Mac",
            Kind::Android => "Android",
            Kind::Other => "Mail program",
        }
    }

    fn parse(text: &str) -> Option<Kind> {
        Kind::ALL.into_iter().find(|k| k.name() == text)
    }
}

display_via!(Kind, name);

/// How the device is set up, as the result page shows it.
pub enum How {
    Apple {
        /// The one-time download's token.
        download: String,
        /// The signing certificate's subject CN; `None`: the profile is unsigned.
        signed_by: Option<String>,
    },
    Android {
        /// The QR code, inline SVG.
        svg: String,
    },
    Other {
        text: String,
    },
}

/// A device set up and not yet shown.
pub struct Ready {
    pub name: String,
    pub secret: Secret,
    pub protocols: Protocols,
    pub how: How,
}

/// An Apple profile waiting for its one download.
pub struct ProfileFile {
    pub bytes: Vec<u8>,
    pub filename: String,
}

enum Content {
    /// `None` once shown: later views say so.
    Result(Option<Box<Ready>>),
    Profile(Option<ProfileFile>),
}

struct Entry {
    mailbox: String,
    expires: Instant,
    content: Content,
}

/// What a token finds for a mailbox.
pub enum Taken<T> {
    /// First use: here it is, and it is gone from the table.
    Fresh(T),
    /// Already used, or expired.
    Used,
    /// No such token for this mailbox (another mailbox's token finds nothing).
    Missing,
}

type Key = [u8; 32];

fn key(token: &str) -> Key {
    Sha256::digest(token.as_bytes()).into()
}

#[derive(Default)]
struct Table {
    map: HashMap<Key, Entry>,
    /// Keys in the order they came, for dropping the oldest.
    order: VecDeque<Key>,
}

impl Table {
    /// Drops expired entries at the front and, when full, the oldest: O(1) per entry.
    fn make_room(&mut self, now: Instant) {
        while let Some(first) = self.order.front() {
            let expired = self.map.get(first).is_none_or(|e| e.expires <= now);
            if !expired && self.map.len() < MAX_SETUPS {
                break;
            }
            if let Some(k) = self.order.pop_front() {
                self.map.remove(&k);
            }
        }
    }

    /// Drops `mailbox`'s oldest entries until there is room for one more of its own.
    fn make_room_for(&mut self, mailbox: &str) {
        let mut held = self.map.values().filter(|e| e.mailbox == mailbox).count();
        while held >= MAX_SETUPS_PER_MAILBOX {
            let oldest = self
                .order
                .iter()
                .position(|k| self.map.get(k).is_some_and(|e| e.mailbox == mailbox));
            let Some(k) = oldest.and_then(|i| self.order.remove(i)) else {
                return;
            };
            self.map.remove(&k);
            held -= 1;
        }
    }
}

/// The one-time results and downloads, in memory (lost at a restart: make a new one).
pub struct Setups {
    table: Mutex<Table>,
    clock: Arc<dyn Clock>,
}

impl Setups {
    pub fn new(clock: Arc<dyn Clock>) -> Self {
        Setups {
            table: Mutex::new(Table::default()),
            clock,
        }
    }

    fn insert(&self, mailbox: &str, lifetime: Duration, content: Content) -> Option<String> {
        let token = random_token()?;
        let now = self.clock.instant();
        let k = key(&token);
        let mut table = self.table.lock().unwrap_or_else(PoisonError::into_inner);
        table.make_room(now);
        table.make_room_for(mailbox);
        table.map.insert(
            k,
            Entry {
                mailbox: mailbox.to_string(),
                expires: now + lifetime,
                content,
            },
        );
        table.order.push_back(k);
        Some(token)
    }

    pub fn add_result(&self, mailbox: &str, result: Ready) -> Option<String> {
        self.insert(
            mailbox,
            RESULT_LIFETIME,
            Content::Result(Some(Box::new(result))),
        )
    }

    pub fn add_profile(&self, mailbox: &str, file: ProfileFile) -> Option<String> {
        self.insert(mailbox, RESULT_LIFETIME, Content::Profile(Some(file)))
    }

    fn take<T>(
        &self,
        token: &str,
        mailbox: &str,
        pick: impl FnOnce(&mut Content) -> Option<Option<T>>,
    ) -> Taken<T> {
        let now = self.clock.instant();
        let mut table = self.table.lock().unwrap_or_else(PoisonError::into_inner);
        let Some(entry) = table.map.get_mut(&key(token)) else {
            return Taken::Missing;
        };
        if entry.mailbox != mailbox {
            return Taken::Missing;
        }
        if entry.expires <= now {
            return Taken::Used;
        }
        match pick(&mut entry.content) {
            None => Taken::Missing,
            Some(None) => Taken::Used,
            Some(Some(t)) => Taken::Fresh(t),
        }
    }

    /// The result behind `token` for `mailbox`, once; its download's ten minutes start.
    pub fn take_result(&self, token: &str, mailbox: &str) -> Taken<Box<Ready>> {
        let taken = self.take(token, mailbox, |c| match c {
            Content::Result(r) => Some(r.take()),
            Content::Profile(_) => None,
        });
        if let Taken::Fresh(ready) = &taken {
            if let How::Apple { download, .. } = &ready.how {
                let expires = self.clock.instant() + PROFILE_LIFETIME;
                let mut table = self.table.lock().unwrap_or_else(PoisonError::into_inner);
                if let Some(entry) = table.map.get_mut(&key(download)) {
                    entry.expires = expires;
                }
            }
        }
        taken
    }

    /// The profile behind `token` for `mailbox`, once.
    pub fn take_profile(&self, token: &str, mailbox: &str) -> Taken<ProfileFile> {
        self.take(token, mailbox, |c| match c {
            Content::Profile(p) => Some(p.take()),
            Content::Result(_) => None,
        })
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.table
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .map
            .len()
    }
}

/// The profile signer and the name it signs as, loaded once at start.
pub struct Signer {
    signer: ProfileSigner,
    /// The signing certificate's subject common name, for the result page.
    subject: String,
}

impl Signer {
    pub fn load(certificate: &Path, key: &Path) -> Result<Signer, WebError> {
        let signer = ProfileSigner::load(certificate, key)
            .map_err(|e| WebError::ProfileSigner(e.to_string()))?;
        let subject = signer
            .signer_name()
            .unwrap_or_else(|| "a certificate without a common name".to_string());
        Ok(Signer { signer, subject })
    }
}

/// The protocols the form offers: what the mailbox allows and `[clients]` has a server for.
fn usable(clients: &ClientSettings, allowed: Protocols) -> Protocols {
    clients.offered(allowed)
}

fn signed_out(state: &WebState) -> Response {
    state.problem(
        StatusCode::FORBIDDEN,
        "Signed out",
        "You are not signed in (any more). Sign in and try again.",
    )
}

/// The signed-in user of a GET request, re-checked; `Err`: the page to show instead.
async fn signed_in(
    state: &WebState,
    headers: &HeaderMap,
) -> Result<(String, String, SignedInUser, Protocols), Box<Response>> {
    let Some((id, s)) = state.session(headers).await? else {
        return Err(Box::new(signed_out(state)));
    };
    let Some(user) = s.user.clone() else {
        return Err(Box::new(signed_out(state)));
    };
    let view = state.recheck(&id, &user).await?;
    Ok((id, s.csrf, user, view.protocols))
}

/// The CSRF token and person of a signed-in session, when device setup is on: the
/// visitor of a result page. Rejected with the page to show instead.
pub struct SetupVisitor {
    csrf: String,
    user: SignedInUser,
}

impl FromRequestParts<AppState> for SetupVisitor {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Response> {
        if state.clients.is_none() {
            return Err(not_found(state));
        }
        let (_, csrf, user, _) = signed_in(state, &parts.headers).await.map_err(|r| *r)?;
        Ok(SetupVisitor { csrf, user })
    }
}

/// `GET /devices`: the form.
pub async fn form(State(state): State<AppState>, headers: HeaderMap) -> Response {
    let Some(clients) = &state.clients else {
        return not_found(&state);
    };
    let (_, csrf, user, allowed) = match signed_in(&state, &headers).await {
        Ok(x) => x,
        Err(r) => return *r,
    };
    let page = device_pages::form(&DeviceForm {
        site: &state.settings.title,
        address: &user.address,
        csrf: &csrf,
        usable: usable(clients, allowed),
        message: None,
        kind: None,
        name: "",
        chosen: None,
    });
    state
        .with_sign_out_csp(html_response(StatusCode::OK, page), &user)
        .await
}

/// What the device is made of: the setup without a password first (to refuse a choice
/// that cannot work before any app password exists), then with it.
fn build(
    state: &WebState,
    clients: &ClientSettings,
    kind: Kind,
    account: &DeviceAccount<'_>,
) -> Result<Built, SetupFailure> {
    Ok(match kind {
        Kind::Apple => Built::Apple(apple::profile(clients, account, &state.settings.title)?),
        Kind::Android => Built::Android(android::svg(&android::payload(clients, account)?)?),
        Kind::Other => Built::Other(manual::text(clients, account)),
    })
}

/// Why a device setup could not be made: the first two are the person's choice and are
/// shown to them; the others are the server's trouble.
#[derive(Debug, thiserror::Error)]
enum SetupFailure {
    #[error(transparent)]
    Setup(#[from] SetupError),
    #[error(transparent)]
    QrCode(#[from] android::TooLong),
    #[error("cannot sign the profile: {0}")]
    Sign(#[from] apple::SignerError),
    #[error("no randomness for a {0} token")]
    NoRandomness(&'static str),
}

enum Built {
    Apple(Vec<u8>),
    Android(String),
    Other(String),
}

/// A file name for the profile from the mailbox's domain: letters, digits, dots, dashes.
fn profile_filename(address: &str) -> String {
    let domain = address.rsplit_once('@').map(|(_, d)| d).unwrap_or("mail");
    let safe: String = domain
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '.' || c == '-' {
                c
            } else {
                '-'
            }
        })
        .collect();
    format!("mail-{safe}.mobileconfig")
}

/// `POST /devices`: issue the app password, make the setup, redirect to its result.
pub async fn create(
    State(state): State<AppState>,
    headers: HeaderMap,
    form: FormResult,
) -> Response {
    let Some(clients) = state.clients.clone() else {
        return not_found(&state);
    };
    let SignedInForm {
        session: s,
        user,
        view,
        fields,
        ..
    } = match account::signed_in_form(&state, &headers, form).await {
        Ok(x) => x,
        Err(r) => return *r,
    };
    let offer = usable(&clients, view.protocols);
    let kind = field(&fields, "kind").and_then(Kind::parse);
    let typed_name = field(&fields, "name").map(str::trim).unwrap_or("");
    let chosen = checked_protocols(&fields);
    let refuse = |text: &str| {
        let page = device_pages::form(&DeviceForm {
            site: &state.settings.title,
            address: &user.address,
            csrf: &s.csrf,
            usable: offer,
            message: Some(Notice { good: false, text }),
            kind,
            name: typed_name,
            chosen: Some(chosen),
        });
        html_response(StatusCode::BAD_REQUEST, page)
    };
    let Some(kind) = kind else {
        return refuse("Choose the kind of device.");
    };
    if let Some(p) = chosen.iter().find(|p| !offer.contains(*p)) {
        return refuse(&format!(
            "{} is not offered for your mailbox: choose among the protocols listed.",
            p.name().to_uppercase()
        ));
    }
    if chosen == Protocols::NONE {
        return refuse("Choose at least one protocol.");
    }
    let Ok(expires_at) = expiry_date(&fields) else {
        return refuse(NOT_A_DATE);
    };
    let display_name = match state.store.get_mailbox(&user.address).await {
        Ok(Some(m)) => m.display_name,
        Ok(None) => return signed_out(&state),
        Err(e) => return account::store_trouble(&state, &e),
    };
    let mut account = DeviceAccount {
        address: &user.address,
        display_name: &display_name,
        password: None,
        protocols: chosen,
    };
    if let Err(why) = build(&state, &clients, kind, &account) {
        return refuse(&account::sentence(&why.to_string()));
    }
    let name = if typed_name.is_empty() {
        kind.default_name()
    } else {
        typed_name
    };
    let issued = match issue_app_password(
        state.store.as_ref(),
        state.auth.key(),
        AppPasswordRequest {
            mailbox: &user.address,
            name,
            protocols: chosen,
            allowed: Some(view.protocols),
            networks: Vec::new(),
            expires_at,
            duplicate_name: DuplicateName::Number,
            now: state.clock.now(),
        },
    )
    .await
    {
        Ok(issued) => issued,
        Err(IssueError::Refused(why)) => return refuse(&account::sentence(&why.to_string())),
        Err(IssueError::Store(e)) => return account::store_trouble(&state, &e),
        Err(e @ IssueError::NoRandomness(_)) => {
            tracing::error!(error = %e, "no randomness for an app password");
            return account::store_trouble(&state, &StoreError::Unavailable("randomness".into()));
        }
    };
    let shown = issued.shown();
    account.password = Some(&shown);
    let made = match build(&state, &clients, kind, &account) {
        Ok(Built::Apple(profile)) => sign(&state, profile).map(|(bytes, signed_by)| {
            (
                Some(bytes),
                How::Apple {
                    download: String::new(),
                    signed_by,
                },
            )
        }),
        Ok(Built::Android(svg)) => Ok((None, How::Android { svg })),
        Ok(Built::Other(text)) => Ok((None, How::Other { text })),
        Err(why) => Err(why),
    };
    let stored = made.and_then(|(profile, mut how)| {
        if let (Some(bytes), How::Apple { download, .. }) = (profile, &mut how) {
            let file = ProfileFile {
                bytes,
                filename: profile_filename(&user.address),
            };
            *download = state
                .setups
                .add_profile(&user.address, file)
                .ok_or(SetupFailure::NoRandomness("download"))?;
        }
        let result = Ready {
            name: issued.name.clone(),
            secret: issued.secret.clone(),
            protocols: chosen,
            how,
        };
        state
            .setups
            .add_result(&user.address, result)
            .ok_or(SetupFailure::NoRandomness("result"))
    });
    let token = match stored {
        Ok(token) => token,
        Err(why) => {
            // No setup to show: the app password would be one nobody knows. Take it back.
            tracing::error!(target: "mailauthd::web", user = %user.address, kind = %kind, error = %why, "device setup failed");
            if let Err(e) = state
                .store
                .delete_app_password(&user.address, issued.id)
                .await
            {
                tracing::error!(target: "mailauthd::web", error = %e, id = issued.id, "cannot remove the app password of a failed device setup");
            }
            return state.problem(
                StatusCode::INTERNAL_SERVER_ERROR,
                "Device setup failed",
                "The setup could not be made; no app password was kept. Try again, or tell your mail administrator.",
            );
        }
    };
    tracing::info!(target: "mailauthd::web", user = %user.address, kind = %kind, id = issued.id, protocols = %chosen, "device set up");
    redirect(&format!("/devices/done/{token}"))
}

/// The profile signed when a signer is configured, and who signed it.
fn sign(state: &WebState, profile: Vec<u8>) -> Result<(Vec<u8>, Option<String>), SetupFailure> {
    match &state.signer {
        None => Ok((profile, None)),
        Some(s) => Ok((s.signer.sign(&profile)?, Some(s.subject.clone()))),
    }
}

/// `GET /devices/done/<token>`: the result, once.
pub async fn done(
    State(state): State<AppState>,
    UrlPath(token): UrlPath<String>,
    SetupVisitor { csrf, user }: SetupVisitor,
) -> Response {
    let site = &state.settings.title;
    let page = match state.setups.take_result(&token, &user.address) {
        Taken::Fresh(result) => html_response(
            StatusCode::OK,
            device_pages::done(site, &user.address, &csrf, &result),
        ),
        Taken::Used => html_response(
            StatusCode::GONE,
            device_pages::already_shown(site, &user.address, &csrf),
        ),
        Taken::Missing => return not_found(&state),
    };
    state.with_sign_out_csp(page, &user).await
}

/// `GET /devices/profile/<token>`: the Apple profile, once, within ten minutes.
pub async fn profile(
    State(state): State<AppState>,
    UrlPath(token): UrlPath<String>,
    SetupVisitor { csrf, user }: SetupVisitor,
) -> Response {
    match state.setups.take_profile(&token, &user.address) {
        Taken::Fresh(file) => (
            StatusCode::OK,
            [
                (
                    header::CONTENT_TYPE,
                    "application/x-apple-aspen-config".to_string(),
                ),
                (
                    header::CONTENT_DISPOSITION,
                    format!("attachment; filename=\"{}\"", file.filename),
                ),
                (header::CACHE_CONTROL, "no-store".to_string()),
            ],
            file.bytes,
        )
            .into_response(),
        Taken::Used | Taken::Missing => html_response(
            StatusCode::GONE,
            device_pages::profile_gone(&state.settings.title, &user.address, &csrf),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::ManualClock;

    fn result(name: &str) -> Ready {
        Ready {
            name: name.into(),
            secret: Secret::from("abcd-efgh"),
            protocols: Protocols::ALL,
            how: How::Other {
                text: "settings".into(),
            },
        }
    }

    #[test]
    fn a_result_is_taken_once_and_only_by_its_mailbox() {
        let setups = Setups::new(Arc::new(ManualClock::default()));
        let token = setups.add_result("a@example.org", result("x")).unwrap();
        assert!(matches!(
            setups.take_result(&token, "b@example.org"),
            Taken::Missing
        ));
        assert!(matches!(
            setups.take_result(&token, "a@example.org"),
            Taken::Fresh(r) if r.name == "x"
        ));
        assert!(matches!(
            setups.take_result(&token, "a@example.org"),
            Taken::Used
        ));
        assert!(matches!(
            setups.take_profile(&token, "a@example.org"),
            Taken::Missing
        ));
        assert!(matches!(
            setups.take_result("not-a-token", "a@example.org"),
            Taken::Missing
        ));
    }

    #[test]
    fn a_profile_whose_page_is_never_shown_lives_as_long_as_the_page() {
        let clock = Arc::new(ManualClock::default());
        let setups = Setups::new(clock.clone());
        let file = || ProfileFile {
            bytes: vec![1],
            filename: "p.mobileconfig".into(),
        };
        let late = setups.add_profile("a@example.org", file()).unwrap();
        let soon = setups.add_profile("a@example.org", file()).unwrap();
        clock.advance(29 * 60);
        assert!(matches!(
            setups.take_profile(&soon, "a@example.org"),
            Taken::Fresh(_)
        ));
        clock.advance(60);
        assert!(matches!(
            setups.take_profile(&late, "a@example.org"),
            Taken::Used
        ));
    }

    #[test]
    fn a_profile_link_has_its_full_time_from_when_its_result_is_shown() {
        let clock = Arc::new(ManualClock::default());
        let setups = Setups::new(clock.clone());
        let mailbox = "a@example.org";
        let file = ProfileFile {
            bytes: vec![1],
            filename: "p.mobileconfig".into(),
        };
        let download = setups.add_profile(mailbox, file).unwrap();
        let mut ready = result("phone");
        ready.how = How::Apple {
            download: download.clone(),
            signed_by: None,
        };
        let shown = setups.add_result(mailbox, ready).unwrap();
        clock.advance(20 * 60);
        // Someone else's setup meanwhile clears what has expired: not this download.
        setups.add_result("b@example.org", result("other")).unwrap();
        assert!(matches!(
            setups.take_result(&shown, mailbox),
            Taken::Fresh(_)
        ));
        clock.advance(9 * 60);
        assert!(matches!(
            setups.take_profile(&download, mailbox),
            Taken::Fresh(_)
        ));
    }

    #[test]
    fn one_mailbox_cannot_push_out_another_mailboxs_setups() {
        let setups = Setups::new(Arc::new(ManualClock::default()));
        let theirs = setups
            .add_result("b@example.org", result("theirs"))
            .unwrap();
        let first_own = setups.add_result("a@example.org", result("first")).unwrap();
        let mut own = Vec::new();
        for _ in 0..MAX_SETUPS + 10 {
            own.push(setups.add_result("a@example.org", result("n")).unwrap());
        }
        assert_eq!(setups.len(), MAX_SETUPS_PER_MAILBOX + 1);
        assert!(matches!(
            setups.take_result(&theirs, "b@example.org"),
            Taken::Fresh(r) if r.name == "theirs"
        ));
        assert!(matches!(
            setups.take_result(&first_own, "a@example.org"),
            Taken::Missing
        ));
        let newest = own.last().unwrap();
        assert!(matches!(
            setups.take_result(newest, "a@example.org"),
            Taken::Fresh(_)
        ));
    }

    #[test]
    fn the_table_is_bounded_and_drops_the_oldest() {
        let setups = Setups::new(Arc::new(ManualClock::default()));
        let first = setups.add_result("a@example.org", result("first")).unwrap();
        let mut last = (String::new(), String::new());
        for i in 0..MAX_SETUPS + 10 {
            let mailbox = format!("m{}@example.org", i % 200);
            last = (setups.add_result(&mailbox, result("n")).unwrap(), mailbox);
        }
        assert_eq!(setups.len(), MAX_SETUPS);
        assert!(matches!(
            setups.take_result(&first, "a@example.org"),
            Taken::Missing
        ));
        assert!(matches!(
            setups.take_result(&last.0, &last.1),
            Taken::Fresh(_)
        ));
    }

    #[test]
    fn profile_file_names_are_safe() {
        assert_eq!(
            profile_filename("a@xn--bcher-kva.example"),
            "mail-xn--bcher-kva.example.mobileconfig"
        );
        assert_eq!(profile_filename("odd"), "mail-mail.mobileconfig");
    }
}
