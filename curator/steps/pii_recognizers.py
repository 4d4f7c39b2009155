"""Recognizers that presidio lacks or cannot run offline, and the allowlist of chat false positives.

* `OfflineEmailRecognizer`: presidio's email pattern, validated with a `tldextract` extractor that
  reads only the public-suffix snapshot bundled with tldextract (no download, no cache dir).
* `StreetAddressRecognizer`: building number + street + suffix (English and common European
  forms), P.O. boxes, and the address lines that follow (unit, city, region, postcode, country),
  so an address split across lines is one span.
* `SecretRecognizer`: API keys and tokens (OpenAI, AWS, GitHub, Slack, Google, Stripe), JWTs,
  private-key blocks, credentials in URLs, and `key=value` assignments whose value looks random.
* `DigitGatedPhoneRecognizer`: presidio's phone recognizer, not run on texts with < 7 digits.
* `CodeAwareUrlRecognizer`: presidio's URL recognizer minus `app.py`, `requests.get` look-alikes.
* `Ipv6Recognizer`: full and `::`-compressed IPv6, which presidio's IP pattern only partly covers.

The three pattern families are hand-written `LocalRecognizer`s rather than presidio
`PatternRecognizer`s because they report a capture group (the secret, not `password=`) or extend a
match across lines by rules that a single regex cannot express without eating the next sentence.
"""

from __future__ import annotations

import functools
import itertools
import math
import re
from collections import Counter

import tldextract
from presidio_analyzer import LocalRecognizer, RecognizerResult
from presidio_analyzer.nlp_engine import NlpArtifacts
from presidio_analyzer.predefined_recognizers import EmailRecognizer, PhoneRecognizer, UrlRecognizer
from stdnum import iban

from curator.steps.pii_ner import common_words

SECRET = "SECRET"
# the capital letters of Latin-1 and Latin Extended-A for regex classes ("Š", "Ł", not "ř", "ł", "×"): a
# range such as "Ā-ſ" takes both cases there
UPPER = "A-ZÀ-ÖØ-Þ" + "".join(c for c in map(chr, range(0x100, 0x180)) if c.isupper())
STREET_ADDRESS = "STREET_ADDRESS"
IPV6 = "IP_ADDRESS"

# well-known languages, tools, products and companies that NER takes for people or places in chat
TECH_NAMES = (
    r"(?:Python|Ruby|Java|JavaScript|TypeScript|Rust|Kotlin|Scala|Perl|PHP|Haskell|Elixir|Erlang|Clojure|Lua|"
    r"Dart|Fortran|COBOL|LaTeX|Latex|Markdown|JSON|json|YAML|SQL|MySQL|PostgreSQL|Postgres|SQLite|MongoDB|Redis|"
    r"Linux|Ubuntu|Debian|Windows|macOS|Android|iOS|Chrome|Firefox|Safari|Google|Facebook|Instagram|Twitter|"
    r"WhatsApp|YouTube|TikTok|LinkedIn|Reddit|Amazon|Microsoft|Apple|OpenAI|ChatGPT|GPT-[34]o?|Vicuna|LLaMA|Llama|"
    r"Anthropic|Netflix|Hulu|Spotify|GitHub|GitLab|Docker|Kubernetes|React|Vue|Angular|Django|Flask|NumPy|Pandas|"
    r"PyTorch|TensorFlow|Excel|PowerPoint|Jupyter|PyCharm|Boeing|Tesla|Earth|Chart\.js|Node\.js|HBO Max|LMSYS|"
    # payment apps that chats name beside a phone number ("Bizum al 600 123 456")
    r"Bizum|Venmo|Zelle|PayPal|Revolut|MobilePay|Vipps|Swish|Twint|BLIK|Satispay|Paylib)"
)

# Chat text is full of strings that recognizers mistake for PII. Each is a full-match regex over
# the detected span (presidio's allow_list in "regex" mode), so "v1.2.3" is kept but an IP is not.
CHAT_ALLOWLIST: tuple[str, ...] = (
    # version numbers; components after the first have at most 3 digits, so 415.867.5309 is no version
    r"^v?\d{1,4}(?:\.\d{1,3}){1,2}(?:[-.+]?(?:rc|a|b|alpha|beta|dev|post)\d*)?$",
    r"^(?:1[89]|20|21)\d{2}s?$",  # years and decades
    r"^\d{4}-\d{2}-\d{2}(?:[T ]\d{2}:\d{2}(?::\d{2}(?:\.\d+)?)?(?:Z|[+-]\d{2}:?\d{2})?)?$",  # ISO dates
    r"^\d{1,2}:\d{2}(?::\d{2})?(?:\s?[AaPp][Mm])?$",  # clock times
    r"^_?[a-z][a-z0-9]*(?:_[a-z0-9]+)+(?:\(\))?$",  # snake_case identifiers
    r"^[a-z]+[A-Z][A-Za-z0-9]*(?:\(\))?$",  # camelCase identifiers
    r"^(?:self|this|cls|np|pd|os|sys|torch|tf)\.[A-Za-z_][\w.]*(?:\(\))?$",  # code attribute access
    r"^(?:localhost|127\.0\.0\.1|0\.0\.0\.0|::1?)$",  # loopback and unspecified addresses
    rf"^{TECH_NAMES}(?:'s)?$",
)


class OfflineEmailRecognizer(EmailRecognizer):
    """presidio's EmailRecognizer whose domain check uses tldextract's bundled suffix list only."""

    # suffix_list_urls=() means "never fetch"; cache_dir=None means "never read or write a cache".
    _EXTRACT = tldextract.TLDExtract(suffix_list_urls=(), cache_dir=None, fallback_to_snapshot=True)

    def validate_result(self, pattern_text: str) -> bool:
        """True when the part after '@' ends in a known public suffix."""
        return self._EXTRACT(pattern_text).fqdn != ""

    def analyze(
        self, text: str, entities: list[str], nlp_artifacts: NlpArtifacts | None = None, regex_flags: int | None = None
    ) -> list[RecognizerResult]:
        """presidio's matches, each starting after the last "=" of its local part: "=" is legal there,
        so "ADMIN_EMAIL=ana@x.io" is one match, but the key before it is no part of the address."""
        out = super().analyze(text, entities, nlp_artifacts, regex_flags)
        for r in out:
            local = text[r.start : r.end].split("@")[0]
            if "=" in local:
                r.start += local.rindex("=") + 1
        return out


class DigitGatedPhoneRecognizer(PhoneRecognizer):
    """presidio's PhoneRecognizer, skipped on texts with fewer than 7 digits (no phone number fits).

    The libphonenumber matcher runs once per region (8 by default) and is the costliest recognizer;
    most chat messages have no 7 digits at all, so the gate saves that work without losing a match.
    """

    MIN_DIGITS = 7

    def analyze(
        self, text: str, entities: list[str], nlp_artifacts: NlpArtifacts | None = None
    ) -> list[RecognizerResult]:
        """presidio's analysis, or nothing when `text` cannot hold a phone number."""
        if sum(c.isdigit() for c in text) < self.MIN_DIGITS:
            return []
        return super().analyze(text, entities, nlp_artifacts)


# File extensions that are also top-level domains: `app.py`, `notes.md`, `run.sh` are files in chat.
_FILE_EXTENSIONS = frozenset(
    {
        "py",
        "js",
        "ts",
        "md",
        "sh",
        "rs",
        "go",
        "rb",
        "pl",
        "cc",
        "cs",
        "so",
        "gz",
        "bz",
        "xz",
        "ps",
        "sql",
        "tsx",
        "jsx",
        "json",
        "yaml",
        "yml",
        "toml",
        "cfg",
        "ini",
        "log",
        "txt",
        "csv",
        "html",
        "css",
        "xml",
        "exe",
        "dll",
        "zip",
        "tar",
        "png",
        "jpg",
        "pdf",
        "ipynb",
        "lock",
        "env",
    }
)


class CodeAwareUrlRecognizer(UrlRecognizer):
    """presidio's UrlRecognizer without the code look-alikes chat is full of.

    A match with no scheme and no `www.` is dropped when it is glued to more identifier characters
    (`requests.get` matched as `requests.ge`), follows a dot (`self.manager.refresh`), or ends in a
    file extension (`app.py`). URLs with a scheme or `www.` are always kept.
    """

    def analyze(
        self, text: str, entities: list[str], nlp_artifacts: NlpArtifacts | None = None
    ) -> list[RecognizerResult]:
        """presidio's matches, minus the code look-alikes described above."""
        kept = []
        for r in super().analyze(text, entities, nlp_artifacts) or []:
            value = text[r.start : r.end]
            if "://" in value or value.lower().startswith("www."):
                kept.append(r)
                continue
            glued = (r.end < len(text) and (text[r.end].isalnum() or text[r.end] in "_(")) or (
                r.start > 0 and text[r.start - 1] in "._"
            )
            if not glued and value.rsplit(".", 1)[-1].lower() not in _FILE_EXTENSIONS:
                kept.append(r)
        return kept


def shannon_entropy(value: str) -> float:
    """Bits per character of `value`: random keys score > 3.5, words and identifiers lower."""
    if not value:
        return 0.0
    counts = Counter(value)
    n = len(value)
    return -sum(c / n * math.log2(c / n) for c in counts.values())


class _OwnRecognizer(LocalRecognizer):
    """Base of our recognizers: one entity type (`ENTITY`), patterns compiled at import, no model."""

    ENTITY = ""

    def __init__(self, supported_language: str = "en") -> None:
        super().__init__(supported_entities=[self.ENTITY], supported_language=supported_language)

    def load(self) -> None:
        """Nothing to load: the patterns are compiled at import."""


class _RegexRecognizer(_OwnRecognizer):
    """Base: a list of (regex, group, score, check) run over the whole text."""

    PATTERNS: tuple[tuple[re.Pattern[str], int, float, str], ...] = ()

    def accept(self, value: str, check: str) -> bool:
        """Extra validation for a candidate value; `check` names the rule."""
        return True

    def extent(self, text: str, start: int, end: int, check: str) -> tuple[int, int] | None:
        """The span a match stands for: itself when its value passes `accept`, else none."""
        return (start, end) if self.accept(text[start:end], check) else None

    def analyze(
        self, text: str, entities: list[str], nlp_artifacts: NlpArtifacts | None = None
    ) -> list[RecognizerResult]:
        """Every match of every pattern whose value passes its check, as a span of `self.ENTITY`."""
        if self.ENTITY not in entities:
            return []
        out = []
        for pattern, group, score, check in self.PATTERNS:
            for m in pattern.finditer(text):
                start, end = m.span(group)
                span = self.extent(text, start, end, check) if end > start else None
                if span is not None:
                    out.append(RecognizerResult(self.ENTITY, span[0], span[1], score))
        return out


_B64 = r"A-Za-z0-9_\-"


class SecretRecognizer(_RegexRecognizer):
    """API keys, tokens, JWTs, private keys and credential assignments (entity `SECRET`)."""

    ENTITY = SECRET
    PATTERNS = (
        (re.compile(r"\bsk-(?:proj-|live-|test-|ant-)?[A-Za-z0-9_\-]{20,}"), 0, 0.95, ""),
        (re.compile(r"\b(?:AKIA|ASIA|AGPA|AIDA|AROA|ANPA|ANVA|AIPA)[0-9A-Z]{16}\b"), 0, 0.95, ""),
        (re.compile(r"(?i)aws.{0,20}?(?:secret|key).{0,10}?[\"'=:\s]+([A-Za-z0-9/+]{40})\b"), 1, 0.9, ""),
        (re.compile(r"\b(?:ghp|gho|ghu|ghs|ghr)_[A-Za-z0-9]{36,}\b|\bgithub_pat_[A-Za-z0-9_]{22,}"), 0, 0.95, ""),
        (re.compile(r"\bxox[abposr]-[A-Za-z0-9\-]{10,}"), 0, 0.95, ""),
        (re.compile(r"\bAIza[0-9A-Za-z_\-]{35}\b"), 0, 0.95, ""),
        (re.compile(r"\b[rsp]k_(?:live|test)_[0-9A-Za-z]{16,}"), 0, 0.95, ""),
        (re.compile(r"\bglpat-[0-9A-Za-z_\-]{20,}"), 0, 0.95, ""),
        (re.compile(rf"\beyJ[{_B64}]{{8,}}\.eyJ[{_B64}]{{8,}}\.[{_B64}]{{8,}}"), 0, 0.95, ""),
        (
            re.compile(
                r"-----BEGIN[A-Z0-9 ]{0,30}PRIVATE KEY(?: BLOCK)?-----[\s\S]*?"
                r"(?:-----END[A-Z0-9 ]{0,30}PRIVATE KEY(?: BLOCK)?-----|\Z)"
            ),
            0,
            1.0,
            "",
        ),
        # credentials inside a URL: scheme://user:PASSWORD@host
        (re.compile(r"\b[a-z][a-z0-9+.\-]*://[^\s:/@]+:([^\s/]{1,}?)@(?=[\w.\-]+(?::\d+)?(?:[/\s'\"]|$))"), 1, 0.9, ""),
        (re.compile(r"(?i)\bbearer\s+([A-Za-z0-9_\-.=~+/]{16,})"), 1, 0.85, "entropy"),
        # passwords, with or without ":", "=" or "is" ("with password Qr7!dke#39"), in the languages of
        # chat exports; the value must not be a plain word ("password reset link")
        (
            re.compile(
                r"(?i)\b(?:password|passwd|pwd|passphrase|passcode|pass\s+code|contraseña|contrasena|clave|passwort|"
                r"kennwort|mot\s+de\s+passe|mdp|senha|wachtwoord|hasło|haslo|heslo|jelszó|jelszo|пароль|"
                r"(?:alarm|door|gate|access|entry|security|garage|safe|lock)[\s-]?code|alarmcode|türcode|"
                r"kod\s+(?:alarmu|do\s+drzwi|dostępu|do\s+bramy)|código\s+(?:de\s+la\s+alarma|de\s+acceso|del\s+portal)|"
                r"codice\s+(?:dell'allarme|d'accesso)|code\s+(?:de\s+l'alarme|d'accès))\b[\"'`]?"
                r"(?:\s*(?:[:=]|->|\bis\b|\bwas\b|\bof\b|\bto\b|\bset\s+to\b|\bchanged\s+to\b|\bwill\s+be\b|\bes\b|"
                r"\bist\b|\best\b|\bé\b|\bè\b|\bjest\b|\bje\b))*\s*[\"'`(]?([^\s\"'`,;]{5,63}[^\s\"'`,;.!?:)])"
            ),
            1,
            0.8,
            "password",
        ),
        # the password named, then its value a few words later ("password? Mine is X", "password for the router: X")
        (
            re.compile(
                r"(?i)\b(?:password|passwd|passphrase|passcode|contraseña|passwort|mot\s+de\s+passe|senha|wachtwoord|hasło|"
                r"heslo|jelszó|пароль)\b[^\n.!]{0,30}?(?:\bis\b|:|=|\bes\b|\bist\b|\best\b)\s*[\"'`(]?"
                r"([^\s\"'`,;]{5,63}[^\s\"'`,;.!?:)])"
            ),
            1,
            0.75,
            "password",
        ),
        (re.compile(r"(?i)\bpin(?:\s+(?:code|number))?\b(?:\s*(?:[:=]|\bis\b))?\s*(\d{4,8})\b"), 1, 0.8, ""),
        # an environment or config variable that holds a secret ("POSTGRES_PASSWORD=...", "API_TOKEN: ...")
        (
            re.compile(
                r"(?im)^[ \t]*(?:export[ \t]+)?[A-Z0-9_]*"
                r"(?:PASSWORD|PASSWD|PWD|(?<![A-Z0-9])PASS(?![A-Z0-9])|SECRET|TOKEN|API_?KEY|PRIVATE_?KEY)"
                r"[A-Z0-9_]*[ \t]*[=:][ \t]*[\"']?([^\s\"']{4,200})"
            ),
            1,
            0.8,
            "env",
        ),
        # a Terraform variable named for a secret: its default is one, quoted or not
        (
            re.compile(
                r"(?is)\bvariable\s+\"[^\"\n]*(?:password|passwd|secret|token|api_?key)[^\"\n]*\"\s*\{[^{}]*?"
                r"\bdefault\s*=\s*\"?([^\s\"{}]{4,200})"
            ),
            1,
            0.8,
            "env",
        ),
        # key/token/secret assignments: the value must look random (not `token = get_token()`)
        (
            re.compile(
                r"(?i)\b[\w\-]*(?:api[_\-]?key|secret|token|access[_\-]?key|auth|credential|private[_\-]?key)"
                r"[\w\-]*\b[\"']?\s*[:=]\s*[\"']?([A-Za-z0-9_\-./+=]{16,})"
            ),
            1,
            0.8,
            "entropy",
        ),
    )

    def accept(self, value: str, check: str) -> bool:
        """Assignments only count when the value looks random: high entropy and mixed classes; a
        password needs a digit, a symbol or mixed case (so "password reset" is no password)."""
        if check == "password":
            return bool(re.search(r"[\d\W_]", value) or (re.search(r"[a-z]", value) and re.search(r"[A-Z]", value[1:])))
        if check == "env":  # not a reference or a placeholder ("${DB_PASS}", "<your API key>", "changeme")
            return not re.fullmatch(  # "$PIAD@dM2JkG" is a password that starts with "$", not a reference
                r"(?i)[<{\[].*|\$\{.*|\$\w+|\$\(.*|[*x.]+|changeme|your[_-]?\w*|none|null|true|false|\w+\(.*", value
            )
        if check != "entropy":
            return True
        if re.fullmatch(r"[A-Za-z_]+(?:[._][A-Za-z_]+)+", value):  # ServiceAccountCredentials.from_json_keyfile
            return False
        classes = sum(bool(re.search(p, value)) for p in (r"[a-z]", r"[A-Z]", r"\d"))
        return shannon_entropy(value) >= 3.5 and classes >= 2


# Words after which a login, a password or a PIN may follow without "password is": "login is admin /
# X", "creds root X", "pw X", "wifi key X", "user/pass: ana / X", in the languages of chat exports
_LOGIN_WORDS = re.compile(
    r"(?i)(?<![/.\w-])(?:log[\s-]?in|logon|log[\s-]?on|sign[\s-]?in|signin|credentials?|creds|user\s?names?|"
    r"u/p|user/pass(?:word)?|login/pass(?:word)?|admin|root|pw|pwd|pass|passcode|passphrase|passwords?|passwd|pin|"
    r"wi-?fi|ssid|router|ssh|ftp|vpn|contraseña|contrasena|clave|usuario|passwort|kennwort|benutzer(?:name)?|"
    r"mot\s+de\s+passe|mdp|identifiant|senha|utente|wachtwoord|gebruikersnaam|hasło|haslo|heslo|jelszó|jelszo|"
    r"пароль|логин|(?:alarm|door|gate|access|entry|security|garage|safe|lock)[\s-]?code|kod|código|codice|"
    r"(?:le|mon|ton|son|du|the|my|der|die|das|el|il|o)\s+code|"
    # a Wi-Fi key, a Nordic code ("hendes kode X"); logging in, in the languages of chat exports; curl's
    # user:password option
    r"(?:wi-?fi[\s-]|wlan[\s-]|network[\s-]|security[\s-])?key|clé|clef|schlüssel|chiave|llave|klucz|klíč|kulcs|"
    r"nøgle|sleutel|chave|kode[nr]?|anmeld\w*|einlogg\w*|inlogg\w*|zaloguj\w*|"
    r"logowani\w*|přihlá\w*|bejelentkez\w*|connexion|se\s+connecter|iniciar\s+sesión|accedi|-u|--user)"
    r"(?![\w/?=.-])"
)
_CRED_SCOPE = re.compile(r"[^\n]{0,80}")
_CRED_STOP = re.compile(r"[.!?](?:\s|$)|\n")
# a token, where an export's "???" for a lost line break also ends one ("Gautier???50" is two words)
_CRED_TOKEN = re.compile(r"(?:[^\s\"'`,;()<>\[\]{}?]|\?(?!\?))+")
_CRED_SYMBOLS = frozenset("!#$%&*?@^+=~|\\")
_NOT_CREDENTIAL = re.compile(
    r"^(?:v?\d+(?:\.\d+)+\w*|[0-9a-f]+|[A-Z]?[a-z]+\d{1,4}|[\w.+\-]+@[\w\-]+\.[\w.\-]+|\w+://\S*|[~/].*|"
    r"#?[0-9A-Fa-f]{3,8}|\$?\d[\d,.]*[%$€£]?|[A-Za-z]+(?:[-_][A-Za-z0-9]+)+|#?[A-Z]{0,5}-?\d+|[A-Za-z]\+\+\d*|"
    r".*[?&]\w+=.*|[A-Za-z][a-z]+(?:[A-Z][a-z]+|\d+)+)$"  # the last: camelCase identifiers ("getUser2Name")
)


# "admin / uqJtcEW6", "root:hunter22": a user and a secret written as a pair, after a login word
_CRED_PAIR = re.compile(r"(?<![\w/])[\w.@+\-]{2,64}[ \t]*(?:/|:)[ \t]*([^\s\"'`,;()<>\[\]{}:/]{6,64})")
_NOT_PAIR_SECRET = re.compile(r"^(?:v?\d+(?:\.\d+)+\w*|\d+|[\w.+\-]+@[\w\-]+\.[\w.\-]+|[A-Za-z]+|.*[?&]\w+=.*)$")


def pair_secret(value: str) -> bool:
    """The second half of a "user / secret" pair reads as a secret with less: letters and a digit or
    a symbol, 6+ characters, and no version, number, email or query ("admin / uqJtcEW6")."""
    return len(value) >= 6 and any(c.isalpha() for c in value) and not _NOT_PAIR_SECRET.match(value)


def looks_like_password(token: str) -> bool:
    """A token that reads as a chosen secret rather than a word, number, version, hash or id: letters
    and digits with a symbol ("Qr7!dke#39"), or mixed case with digits inside ("aB3kd9LqP")."""
    if not 6 <= len(token) <= 64 or _NOT_CREDENTIAL.match(token):
        return False
    letters = any(c.isalpha() for c in token)
    digits = any(c.isdigit() for c in token)
    if not (letters and digits):
        return False
    if any(c in _CRED_SYMBOLS for c in token):
        return True
    upper, lower = any(c.isupper() for c in token), any(c.islower() for c in token)
    if upper and lower and len(token) >= 8 and _nonword_run(token):  # "tCHJvcrzj9811", "FCbvbv5509"
        return True
    inner_digit = any(c.isdigit() for c in token.rstrip("0123456789"))  # not only a trailing "1"
    switches = sum(_char_class(a) != _char_class(b) for a, b in itertools.pairwise(token))
    if not (upper and lower):
        return False
    if inner_digit and switches >= 4:
        return True
    # fewer switches or digits only at the end: random case ("biAUN0zsj", "xkGwnDTK2"), not camel-case
    # words ("PlayStation5", "McDonalds2")
    return not _CAMEL_WORDS.fullmatch(token) and (switches >= 4 or (inner_digit and switches >= 3))


_CAMEL_WORDS = re.compile(r"[a-z]*(?:[A-Z]{1,2}[a-z]+)+\d*")


def _nonword_run(token: str) -> bool:
    """Whether a run of 3+ lower-case letters in `token` (with the capital before it) is no word of
    Rampart's lexicon: "Jvcrzj" of a chosen password, not "Station" of "PlayStation5"."""
    lexicon = common_words()
    if lexicon is None:
        return False
    for run in re.findall(r"[A-Z]?[a-z]{3,}", token):
        word = run.lower()
        if word not in lexicon and word.rstrip("s") not in lexicon:
            return True
    return False


def _char_class(c: str) -> int:
    """0 digit, 1 upper, 2 lower, 3 other (for counting how often a token changes character kind)."""
    return 0 if c.isdigit() else 1 if c.isupper() else 2 if c.islower() else 3


def _secret_tokens(text: str, start: int, end: int) -> list[tuple[int, int]]:
    """[start, end) of each token in text[start:end] that looks like a chosen secret."""
    out = []
    for tok in _CRED_TOKEN.finditer(text, start, end):
        value = tok.group(0).rstrip(".!?:")
        key = _FIELD_KEY.match(value)  # "ip=10.2.4.17" in a login log line: the value alone is judged
        offset = key.end() if key else 0
        if looks_like_password(value[offset:]):
            out.append((tok.start() + offset, tok.start() + len(value)))
    return out


_FIELD_KEY = re.compile(r"[A-Za-z_][\w.\-]*=")


# what makes a whole text about a password or logging in (not the weak cues "key", "pin", "admin", "-u")
_PASSWORD_TOPIC = re.compile(
    r"(?i)(?<!\w)(?:passwords?|passwort\w*|kennwort|contraseña|contrasena|mot\s+de\s+passe|senha|wachtwoord|"
    r"hasło|haslo|heslo|jelszó|jelszo|пароль|passcode|passphrase|log[\s-]?in|sign[\s-]?in|credentials|"
    # inflected and Nordic forms ("tego samego hasła", "jelszavam", "adgangskoden", "lösenordet"), "pw"
    r"has(?:ła|łem|łu|eł|la|lem)|hesl(?:a|em|u|o)|hesel|jelszav\w*|jelszót|contraseñas|senhas|palavra-passe|"
    r"wachtwoorden|kennwörter|adgangskode\w*|kodeord\w*|lösenord\w*|passord\w*|clave|mdp|pwd?|"
    r"logge?[ \t]+ind|logge[ \t]+inn|logga[ \t]+in|"
    r"anmeld\w*|einlogg\w*|inlogg\w*|zaloguj\w*|přihlá\w*|bejelentkez\w*|iniciar\s+sesión|se\s+connecter|"
    r"wi-?fi|wlan|router|hotspot|ssid)(?!\w)"
)


def password_tokens(text: str, within: tuple[int, int] | None = None) -> list[tuple[int, int]]:
    """Secret-looking tokens anywhere in prose that speaks of passwords, logging in or a Wi-Fi key,
    the cue in another sentence ("ich hab damals ROLN0U5eYWy genommen" ... "Passwort vergessen"),
    and in any prose a token that mixes all four kinds of character ("*gJdw#n7"); `within` limits
    them to a part of `text` (inline code in such prose: "the password `A2QM%ec3` has a %")."""
    start, end = within or (0, len(text))
    tokens = _secret_tokens(text, start, end)
    return tokens if _PASSWORD_TOPIC.search(text) else [(a, b) for a, b in tokens if _four_kinds(text[a:b])]


def _four_kinds(token: str) -> bool:
    """Upper and lower case letters, a digit and a symbol, 8+ characters: what password rules ask for
    and what no word, number, version or identifier in prose looks like."""
    if re.match(r"[A-Za-z_][\w\-]*[=:]", token):  # "POSTGRES_PASSWORD=Q7rreb!z": the key's rules take the value
        return False
    token = token.lstrip("@#")  # a handle or hashtag ("@ClaireMcD22", "#GoTSeason5") is no secret by its mark
    if "/" in token:  # "C++17/Python3.11", "Q3/FY2024-EU!": lists and paths, not one chosen secret
        return False
    return len(token) >= 8 and len({_char_class(c) for c in token}) == 4 and any(c in _CRED_SYMBOLS for c in token)


class CredentialRecognizer(_OwnRecognizer):
    """Passwords and PINs near a login word without "password is" (entity `SECRET`).

    "The router admin login is admin / Qr7!dke#39", "creds: root Xy9#kq2L", "pw aB3kd9LqP": after a
    login, account, password or PIN word, the tokens up to the sentence end (80 characters at
    most) that look like a chosen secret (`looks_like_password`) are secrets. Words, versions,
    hashes, order and invoice numbers, emails and paths never pass that test, so "log in to
    v2.3.1 with order INV-2024-0042" keeps everything. Hand-written because the value may sit
    several tokens after the cue and a regex cannot test each candidate token.
    """

    ENTITY = SECRET

    def analyze(
        self, text: str, entities: list[str], nlp_artifacts: NlpArtifacts | None = None
    ) -> list[RecognizerResult]:
        """Every password-looking token in the scope of a login word."""
        if self.ENTITY not in entities:
            return []
        out: list[RecognizerResult] = []
        done = 0
        for cue in _LOGIN_WORDS.finditer(text):
            start = max(cue.end(), done)
            scope = _CRED_SCOPE.match(text, start)
            end = scope.end() if scope else start
            stop = _CRED_STOP.search(text, start, end)
            end = stop.start() if stop else end
            out += [RecognizerResult(self.ENTITY, a, b, 0.7) for a, b in _secret_tokens(text, start, end)]
            # in a user/secret pair the secret needs only letters and a digit or symbol ("admin / uqJtcEW6")
            for pair in _CRED_PAIR.finditer(text, cue.start(), end):  # the cue may be the user ("admin / X")
                value = pair.group(1).rstrip(".!?")
                if pair_secret(value):
                    out.append(RecognizerResult(self.ENTITY, pair.start(1), pair.start(1) + len(value), 0.7))
            done = max(done, end)
        return out


class Ipv6Recognizer(_RegexRecognizer):
    """IPv6 addresses, full or `::`-compressed, validated with `ipaddress`."""

    ENTITY = IPV6
    PATTERNS = (
        (
            re.compile(r"(?<![\w:.])(?:[0-9A-Fa-f]{0,4}:){2,7}(?:[0-9A-Fa-f]{1,4}|(?:\d{1,3}\.){3}\d{1,3})(?![\w:.])"),
            0,
            0.8,
            "ipv6",
        ),
    )

    def accept(self, value: str, check: str) -> bool:
        """Only strings that `ipaddress` parses as IPv6 (so `12:30:45` is not one)."""
        import ipaddress

        try:
            ipaddress.IPv6Address(value)
        except ValueError:
            return False
        return value.count(":") >= 3 or ("::" in value and any(c.isalpha() for c in value))


_SUFFIX = (  # street types written as a separate word: English (USPS suffixes), German, Hungarian, Czech, Nordic
    r"(?:Street|St|Road|Rd|Avenue|Ave|Av|Lane|Ln|Boulevard|Blvd|Drive|Dr|Court|Ct|Way|Place|Pl|Terrace|"
    r"Circle|Cir|Highway|Hwy|Parkway|Pkwy|Square|Sq|Trail|Trl|Crescent|Close|Row|Alley|Plaza|Walk|Hills?|"
    r"Str|Mews|Groves?|Gardens?|Parks?|Loop|Mall|Gateway|Landing|Points?|Pass|Path|Pike|Run|Crossing|Ridges?|"
    r"Heights|Estates?|Junction|Commons?|Center|Centre|Creek|Meadows?|Station|Turnpike|Expressway|Freeway|"
    r"Motorway|Views?|Vista|Bay|Glens?|Greens?|Harbou?r|Isle|Islands?|Knolls?|Manors?|Port|Shores?|Springs?|"
    r"Summit|Villas?|Wells?|Forks?|Fords?|Falls|Fields?|Forest|Haven|Hollow|Keys?|Lakes?|Mills?|Mission|Mount|"
    r"Mountains?|Oval|Pines?|Plains?|Prairie|Ranch|Rapids?|River|Shoals?|Spurs?|Stream|Track|Trace|Trafficway|"
    r"Union|Valleys?|Viaduct|Villages?|Ville|Brooks?|Burgs?|Bypass|Camp|Canyon|Cape|Causeway|Cliffs?|Corners?|"
    r"Cove|Crest|Crossroad|Curve|Dale|Divide|Ferry|Flats?|Forge|Fort|Inlet|Lodge|Neck|Orchard|Overpass|"
    r"Passage|Ramp|Route|Skyway|Stravenue|Throughway|Tunnel|Underpass|Wynd|Esplanade|Promenade|Quay|"
    r"Branch|Bridge|Centers|Circles|Courts|Coves|Dam|Drives|Extensions?|Forges|Harbors|Junctions|Lights|Loaf|"
    r"Locks?|Parkways|Ports|Radial|Roads|Squares|Streets|Unions|Wall|"
    r"Straße|Strasse|Allee|Platz|Gasse|Weg|Damm|Ufer|Chaussee|utca|u\.|út|útja|tér|tere|körút|köz|sétány|"
    r"rakpart|náměstí|nám\.|Náměstí|Nám\.|třída|Třída|tř\.|nábřeží|Nábřeží|ulice|gade|gatan|gata|vägen|veien|torg|plass|Allé|allé)\.?(?![\w-])"
)
# the same in lower case ("123 main street"), only the unambiguous types
_LOWER_SUFFIX = (
    r"(?:street|road|rd|avenue|ave|lane|boulevard|blvd|drive|court|terrace|circle|highway|hwy|parkway|square|"
    r"trail|crescent|grove|gardens)\.?(?![\w-])"
)
_LOWER_STOP = (
    r"(?:the|a|an|of|to|in|on|at|and|or|my|your|our|his|her|their|down|up|from|for|with|by|this|that|these|"
    r"those|is|are|was|were|be|it|its|one|two|three|four|five|other|more|less|per|each|every|than|then|same)"
)
_COMPOUND = (  # Germanic/Nordic street types, usually glued to the name (Byvej, Hauptstraße)
    r"(?:straße|strasse|str\.|straat|gate|gata|gatan|vej|veien|vägen|weg|gasse|katu|kuja|tie|laan|plein|utca|"
    r"gracht|kade|singel|dijk|steeg|dreef|baan|allee|platz|damm|ufer|gade|stræde|plads|vei|torget)"
    r"(?![\w-])"
)
_PREFIX = (  # street types written before the name (40 rue Victor Hugo, ul. Asnyka Adama 82)
    r"(?:Rue|Rua|R\.|Avenida|Av\.|Avenue|Via|Viale|Calle|C\.|Carrer|Piazza|Plaza|Place|Boulevard|Bd\.?|"
    r"ul\.|ulica|al\.|aleja|plac|Chemin|Allée|Alameda|Travessa|Largo|Camino|Paseo|Praça|Corso|Vicolo|Strada|Piazzale|"
    r"Contrada|Borgo|Rambla|Ronda|Avinguda|Passeig|Quai|Impasse|Cours|Rua|Estrada|Rodovia|Calea|Strada|Bulevardul)"
)
_PREFIX_NEEDS_NUMBER = (  # "pl." (Polish plac) too: Hungarian "pl." is "e.g."
    r"pl\.|os\.|Residencial|Conjunto|Condomínio|Chácara|Loteamento|Núcleo|Setor|Vila|Viela|Quadra|Sítio|Passarela|Estrada|"
    r"Fazenda|Jardim|Ladeira|Morro|Parque|Recanto|Vereda|Esplanada|Trecho|Trevo|Vale|Lago|Lagoa|Campo|Colônia|"
    r"Distrito|Aeroporto|Favela|Feira|Rodovia|Urbanización|Glorieta|Callejón|Pasaje|Carretera|Cuesta|Vía|Traversa|"
    r"Salita|Rotonda|Borgo|Contrà|Stretto|Incrocio|Canale|Área|Estação|Pátio|Praia|Viaduto|Vial|Cañada|Acceso|Pasadizo"
)
_W = r"(?:[A-ZÀ-ÞΑ-Ω][\w'.\-]*|\d{1,5}(?:-\d{3,4})?[A-Za-z]?)"  # a capitalised word, a house number or a postcode
_PARTICLE = (
    r"(?:de|da|das|do|dos|del|della|dei|degli|delle|dello|dal|dalla|al|alla|di|du|des|la|le|les|van|von|der|den|el|y|e)"
)
_ANY = r"[^\W\d_][\w'.\-]*"  # any word, any case or script (only used where a line is anchored)
_NUM = r"\d{1,6}[A-Za-z]?(?:[/\-]\d{1,4}[A-Za-z]?)?"  # 12, 12a, 6/7, 35-37
_UNIT = r"(?:,?\s*(?:Apt|Apartment|Suite|Ste|Unit|Flat|Floor|Fl|Room|Rm|#)\.?\s*#?\w{1,6})"
_UNIT_END = re.compile(r"(?:Apt|Apartment|Suite|Ste|Unit|Flat|Floor|Fl|Room|Rm|#)\.?\s*#?\w{1,6}$")
_STREET = (  # "Main Street", "Hauptstraße", "Bertram-Hentschel-Platz", "Ingelbrecht Knudssøns gate"
    rf"(?:(?:{_W}[ \t]+){{0,4}}?(?:{_W}[ \t]+{_SUFFIX}|[A-ZÀ-Þ][\w'À-ÿ\-]*(?:{_COMPOUND}|-(?i:{_COMPOUND}))|"
    rf"{_W}[ \t]+{_COMPOUND}))"
)
_ADDRESS_PATTERNS = (
    # 12 Main Street [Apt 4]
    re.compile(rf"\b{_NUM},?[ \t]+{_STREET}{_UNIT}?", re.UNICODE),
    # 123 main street, 4 elm grove (lower case: a house number, 1-3 ordinary words, an unambiguous type)
    re.compile(
        rf"(?i:\b\d{{1,5}}[ \t]+(?:(?!{_LOWER_STOP}\b)[a-zà-ÿ][\w'\-]*[ \t]+){{1,3}}{_LOWER_SUFFIX}){_UNIT}?",
        re.UNICODE,
    ),
    # Frørup Byvej 22 / Ingelbrecht Knudssøns gate 222 / Theofanus Street 162
    re.compile(rf"\b{_STREET}[ \t]+{_NUM}\b{_UNIT}?", re.UNICODE),
    # 40 rue Victor Hugo / Via Nazario Sauro 112 / ul. Asnyka Adama 82
    re.compile(
        rf"(?:\b{_NUM},?[ \t]+){{0,2}}(?<![\w.])(?i:{_PREFIX})[ \t]+(?:(?:{_W}|{_PARTICLE})[ \t]+){{0,4}}{_W}"
        rf"(?:[ \t]+{_NUM}\b)?{_UNIT}?",
        re.UNICODE,
    ),
    re.compile(r"(?i)\b(?:P\.?\s?O\.?\s*Box|Post(?:al)?\s+Office\s+Box)\s+\d{1,7}\b"),
    # Portuguese/Spanish/Italian street kinds that are also ordinary words, so only with a house number:
    # "Residencial Pedro Lucas Pinto, 32", "Travessa do Norte 12", "Jardim Paulista, 400"
    re.compile(
        rf"(?<![\w.])(?:{_PREFIX_NEEDS_NUMBER})[ \t]+(?:(?:{_W}|{_PARTICLE})[ \t]+){{0,4}}{_W},?[ \t]+{_NUM}\b{_UNIT}?",
        re.UNICODE,
    ),
    # a line that is "house number, words, number" (59 Heiligengeistbrücke 77, 16 salontie 6)
    re.compile(
        rf"(?m)^[ \t>?*\-]*(?P<a>{_NUM}[ \t]+(?:{_ANY}[ \t]+){{1,4}}{_NUM})(?=[ \t]*(?:$|,|Apt|Suite))", re.UNICODE
    ),
    # mid-sentence "Capitalised Name 12" after a house number or "at"/"to"
    re.compile(
        rf"(?:\b{_NUM}[ \t]+|(?<=\bat )|(?<=\bto ))(?:{_W}|{_PARTICLE})(?:[ \t]+(?:{_W}|{_PARTICLE})){{0,3}}"
        rf"[ \t]+{_NUM}\b",
        re.UNICODE,
    ),
    # US military addresses: ship or unit line, then FPO/APO/DPO AA|AE|AP + ZIP
    re.compile(
        r"(?i:(?:\b(?:USNS|USS|USNV|USCGC|Unit|PSC|CMR)\b[^\n]{1,40}?(?:\n|,|\?{2,})[ \t]*)?"
        r"\b(?:FPO|APO|DPO)[ \t]+(?:AA|AE|AP)"
        r"[ \t]+\d{5}\b)"
    ),
    # a unit line on its own (Apt. 363, Suite 594)
    re.compile(r"(?i:\b(?:Apt|Apartment|Suite|Ste)\.?[ \t]*#?\d{1,5}\b)"),
)
# A following line counts as part of the address when it is short and looks like a unit, a city,
# a region, a postcode or a country (no sentence punctuation, starts with a letter or a digit).
_ADDRESS_LINE = re.compile(
    r"[ \t]*(?:[>?*\-,][ \t]*)?(?!(?:Tel|Phone|Fax|Email|Mobile)\b)"
    r"[\w(][\w .,'()\-/#]{0,45}",
    re.UNICODE,
)
# a line break (one blank line may follow), the "???" an export left for one, or both ("\n??? ")
_LINE_BREAK = re.compile(r"[ \t]*\.?[ \t]*(?:(?:\r?\n[ \t]*){1,2}(?:\?{2,}[ \t]*)?|\?{2,}[ \t]*)")
# "183 58 Nová Bystřice", "H-2125 Nagyhetvenkövesd", "4412IT Finsterwolde", "11567 Erkelenz": a line that is a
# postcode and a town (the European order), below a line ending in a street and a house number; a bare
# 4-digit year ("Python 3\n2024 Edition") is no postcode
_POSTCODE_LINE = re.compile(
    r"(?m)^[ \t]*(?:[A-Z]{1,2}-\d{4,5}|\d{5}(?:-?\d{3})?|\d{4}[ \t]?[A-Z]{2}|\d{3}[ \t]\d{2}|\d{2}-\d{3}|"
    r"(?!(?:19|20)\d\d\b)\d{4})[ \t]+"
    rf"[{UPPER}][\w'’\-]*(?:[ \t]+(?:[{UPPER}][\w'’\-]*|nad|pod|am|an|im|in|bei|de|la|le|sur|en|di|del|upon))*"
    rf"(?:,[ \t]*[{UPPER}][\w'’\-]*(?:[ \t]+[{UPPER}][\w'’\-]*){{0,2}}){{0,2}}"  # ", Czechia", ", Pest, Hungary"
    r"[ \t]*$"
)
_STREET_LINE_END = re.compile(
    r"(?!(?:Chapter|Page|Section|Step|Part|Figure|Table|Version|Level|Season|Episode|Round|Week|Day|Year|Grade|"
    r"Question|Exercise|Lesson|Unit|Item|Rule|Article|Phase|Stage|Task|Room|Floor|Track|Volume|Vol)\b)"
    rf"(?:[^\W\d_][\w'’.\-]*[ \t]+){{0,3}}(?:[{UPPER}][\w'’.\-]*|{_SUFFIX})[ \t]+"
    r"\d{1,5}[A-Za-z]?(?:[/\-]\d{1,4})?\.?[ \t]*$"
)
# or a line that opens with a street type written before the name ("Favela Mathias Rocha", "Rua do Sol")
_STREET_LINE_START = re.compile(
    rf"[ \t]*(?:{_PREFIX}|{_PREFIX_NEEDS_NUMBER}|ul\.|al\.)[ \t]+[{UPPER}][^\n.!?:;]{{1,60}}$", re.UNICODE
)
_PREFIX_START = re.compile(rf"(?<![\w.])(?i:{_PREFIX}|ul\.|al\.)(?=[ \t]+[{UPPER}])", re.UNICODE)
# words that lead into an address ("... to Adam Lizoń at ul. Majowa 501"): the street starts after the last
_LEAD_IN = frozenset({"at", "to", "in", "on", "from", "near", "of", "is", "for", "and", "the", "my", "our", "your"})


_PREFIX_BEFORE = re.compile(rf"(?<![\w.])(?i:{_PREFIX})[ \t]+$", re.UNICODE)


def street_type_before(text: str, start: int) -> int:
    """Where a street type written before a street name ends at `start` ("ul. " or "via " of a
    lower-case "ul. kazimierza wielkiego 103" that the tagger took from its name on), else `start`."""
    m = _PREFIX_BEFORE.search(text, max(0, start - 16), start)
    return m.start() if m else start


def _street_start(text: str, start: int, end: int) -> int:
    """Where the street of a line-end match [start, end) begins: at its last street type written before
    the name ("ul.", "Via"), else after its last lead-in word, else at `start`."""
    prefixes = [m.start() for m in _PREFIX_START.finditer(text, start, end)]
    if prefixes:
        return prefixes[-1]
    cut = start
    for w in re.finditer(r"\S+", text[start:end]):
        if w.group(0) in _LEAD_IN:
            cut = start + w.end()
    return cut + len(text[cut:end]) - len(text[cut:end].lstrip())


_QUESTION_MARKS = re.compile(r"\?{2,}")  # what some exports leave where a line break was
# an address's same-line tail: capitalised words, house numbers and postcodes after commas; a word's
# last dot ends the sentence, not the word ("M8A 0SQ North Pamelabury. Of course")
_TAIL_WORD = r"(?:[A-ZÀ-ÞΑ-Ω](?:[\w'\-]|\.(?=\w))*|\d{1,5}(?:-\d{3,4})?[A-Za-z]?)"
_TAIL = re.compile(rf"\.?(?:[ \t]?,[ \t]*(?:{_TAIL_WORD}[ \t]?){{1,4}}){{1,4}}", re.UNICODE)
# "Apt. 584 Ebermannsdorf Belarus": town and country after a unit, without commas, up to 5 capitalised
# words that do not open a new sentence ("Apt 4 Is that right?"), up to punctuation or a lower-case word
_AFTER_UNIT = re.compile(
    r"(?<=\d)(?:[ \t]+(?!(?:Is|Are|Was|Were|The|This|That|It|I|We|You|He|She|They|Please|Thanks|Thank|Can|Could|"
    rf"Would|Will|Do|Does|Did|My|Our|Your|And|But|So|If|What|When|Where|How|Why|Who|Let|Hi|Hello)\b){_W}){{1,5}}"
    r"(?=[ \t]*(?:$|\n|[.,;!?])|[ \t]+[a-z])",
    re.UNICODE,
)
# a phone, fax or email label before its value, which ends the same-line tail of an address
_CONTACT_LABEL = re.compile(
    r"[ \t]*[,;]?[ \t]*(?i:tel|tél|tlf|tfn|telefon\w*|telefoon|telephone|phone|ph|fon|mob|mobil\w*|handy|cell|fax|"
    r"e-?mail)\.?[ \t]*:?[ \t]*(?=[+(\d])"
)
_REST_OF_LINE = re.compile(rf"(?:,?[ \t]+{_W})+[ \t]*(?=\n|$)", re.UNICODE)
# a postcode after its label, in the languages of chat exports ("Código postal: 67606", "PSČ 473 81")
_POSTCODE_CONTEXT = re.compile(
    r"(?i:\b(?:zip ?code|zip|post ?code|postal code|código postal|codigo postal|code postal|cp|c\.p\.|plz|"
    r"postleitzahl|cap|codice postale|kod pocztowy|psč|irányítószám|postnummer|cep|postcode)s?(?!\w))"
    r"\W{0,12}?(?:is\s+|es\s+|:\s*)?"
    r"(\d{5}-?\d{3}|\d{4} ?[A-Z]{2}|\d{3} \d{2}|\d{2}-\d{3}|\d{3,5}(?:-\d{4})?|[A-Z]{1,2}-\d{4,5}|"
    r"[A-Z]{1,2}\d[A-Z\d]? ?\d[A-Z]{2}|[A-Z]\d[A-Z] ?\d[A-Z]\d)(?![\w-])"
)


# a date written as day, month and year ("3 Mar 2025", "12. März 2024"), which the "number, words,
# number" patterns would otherwise read as a house number and a street
_DAY_MONTH_YEAR = re.compile(
    r"(?i)\d{1,2}\.?[ \t]+(?:jan|feb|m[aä]r|apr|ma[iyj]|jun|jul|aug|sep|o[ck]t|nov|de[cz]|"
    r"janvier|février|mars|avril|juin|juillet|août|septembre|octobre|novembre|décembre|enero|febrero|"
    r"marzo|abril|mayo|junio|julio|agosto|septiembre|octubre|noviembre|diciembre|gennaio|febbraio|"
    r"aprile|maggio|giugno|luglio|settembre|ottobre|dicembre|januari|februari|maart|mei|juni|juli|"
    r"augustus|oktober|januar|februar|märz|juni|dezember)[a-zé]*\.?,?[ \t]+\d{2,4}"
)


_LOG_LEVEL = re.compile(r"\b(?:ERROR|WARN(?:ING)?|INFO|DEBUG|TRACE|FATAL|CRITICAL)\b")
# words between two numbers that make arithmetic or a range, not a street ("66 and 44", "3 x 4")
_CONNECTORS = frozenset({"and", "or", "to", "x", "by", "of", "plus", "minus", "times", "from", "und", "et", "y", "e"})
_LETTERS = re.compile(r"[^\W\d_]+")


class StreetAddressRecognizer(_RegexRecognizer):
    """Street addresses, extended over the unit/city/postcode/country lines that follow them."""

    ENTITY = STREET_ADDRESS

    def analyze(
        self, text: str, entities: list[str], nlp_artifacts: NlpArtifacts | None = None
    ) -> list[RecognizerResult]:
        """Every street-like match, extended to the rest of the address on its line and below."""
        if self.ENTITY not in entities:
            return []
        out = []
        for pattern in _ADDRESS_PATTERNS:
            group = "a" if "a" in pattern.groupindex else 0
            for m in pattern.finditer(text):
                if sum(c.isalpha() for c in m.group(group)) < 3:  # "5012 3456 7896" is digits, not a street
                    continue
                if _DAY_MONTH_YEAR.fullmatch(m.group(group)):  # "Date: Mon, 3 Mar 2025 at 09:14"
                    continue
                if all(w.lower() in _CONNECTORS for w in _LETTERS.findall(m.group(group))):  # "66 and 44"
                    continue
                if text[max(0, m.start(group) - 1) : m.start(group)] == ":" or _LOG_LEVEL.search(m.group(group)):
                    continue  # a log line's time and level: "2024-03-11T09:14:23Z ERROR 402"
                end = self._extend(text, m.end(group))
                out.append(RecognizerResult(self.ENTITY, m.start(group), end, 0.7))
        # the same offsets, with each "???" made a line break, so both layouts are read as lines
        lined = _QUESTION_MARKS.sub(lambda q: " " * (len(q.group(0)) - 1) + "\n", text)
        for m in _POSTCODE_LINE.finditer(lined):
            above = lined.rfind("\n", 0, max(0, m.start() - 1)) + 1
            line_end = max(above, m.start() - 1)
            street = _STREET_LINE_END.search(lined, above, line_end) or _STREET_LINE_START.match(lined, above, line_end)
            if street and m.start() - street.end() <= 4:
                start = _street_start(lined, street.start(), street.end())
                out.append(RecognizerResult(self.ENTITY, start, self._extend(text, m.end()), 0.7))
        for m in _POSTCODE_CONTEXT.finditer(text):
            if any(c.isdigit() for c in m.group(1)):
                out.append(RecognizerResult(self.ENTITY, m.start(1), m.end(1), 0.6))
        return out

    @staticmethod
    def _extend(text: str, end: int) -> int:
        """Grow the span over a same-line tail (', Springfield, IL 62704') and up to 4 address lines.

        A line break, or the "???" that some exports leave for one, starts the next line. The same-line
        tail stops at a sentence end ("12 Main Street, Springfield. My doctor is" ends at "Springfield").
        """
        start = end
        if _UNIT_END.search(text, max(0, end - 16), end):
            after = _AFTER_UNIT.match(text, end)
            end = after.end() if after else end
        tail = _TAIL.match(text, end)
        if tail:
            end = tail.end()
        rest = _REST_OF_LINE.match(text, end)
        if rest:
            end = rest.end()
        label = _CONTACT_LABEL.search(text, start, end)  # "Kerkstraat 5, 1234 AB Utrecht, Tel. 300 3390"
        if label:
            end = label.start()
        stop = _sentence_end(text[start:end], upper_next=True)
        if stop is not None:
            return start + stop
        for _ in range(4):
            brk = _LINE_BREAK.match(text, end)
            if not brk:
                break
            nxt = _LINE_BREAK.search(text, brk.end())
            stop = nxt.start() if nxt else len(text)
            # "Japan 26218. Please call me": the address ends with the sentence on its last line
            sentence = _sentence_end(text[brk.end() : stop], upper_next=True)
            last = sentence is not None
            if last:
                stop = brk.end() + sentence
            line = _ADDRESS_LINE.match(text, brk.end(), stop)
            comma = text.find(",", brk.end(), stop)
            if (not line or line.end() != stop) and comma > brk.end():  # "Guinea 42309, and the corner of..."
                stop, last = comma, True
                line = _ADDRESS_LINE.match(text, brk.end(), stop)
            candidate = text[brk.end() : stop]
            if last and not _tail_line(candidate):  # "Thanks. See you", "Thanks for that, see you"
                break
            if (
                not line
                or line.end() != stop
                or _sentence_end(candidate) is not None
                or "@" in candidate
                or candidate.split()[0].lower().strip(",.!") in NOT_A_PLACE  # "thanks", "Best,"
                or sum(c.isdigit() for c in candidate) >= 9  # a phone or account number, not an address line
                # after a blank line only a postcode line still belongs to the address
                or (brk.group(0).count("\n") > 1 and not re.search(r"\d{3}", candidate))
            ):
                break
            end = stop
            if last:
                break
        return end


_STREET_WORD = re.compile(
    rf"(?<!\w)(?:{_SUFFIX}|{_PREFIX}|{_PREFIX_NEEDS_NUMBER})(?!\w)|(?i:(?<!\w){_LOWER_SUFFIX})|\w{_COMPOUND}"
    rf"|{_PREFIX_START.pattern}"  # French and Italian write it lower case: "709, chemin Charlotte Breton"
)


def has_street_word(value: str) -> bool:
    """Whether `value` holds a street type in one of the languages we read ("Road", "rue", "-gasse")."""
    return _STREET_WORD.search(value) is not None


NOT_A_PLACE = frozenset(
    {"thanks", "thank", "regards", "best", "cheers", "please", "hi", "hello", "dear", "ok", "okay"}
    | {"wi-fi", "wifi", "wlan"}
)


def _tail_line(line: str) -> bool:
    """Whether the part of a line before a sentence end or comma can end an address: it holds a
    postcode-like number, or it is 1-4 capitalised words that are no greeting ("Japan 26218", "Springfield")."""
    if re.search(r"\d{3}", line):
        return True
    words = line.split()
    return 0 < len(words) <= 4 and all(w[0].isupper() for w in words) and words[0].lower() not in NOT_A_PLACE


_ABBREVIATIONS = frozenset(
    {"st", "rd", "dr", "ln", "ct", "pl", "av", "ave", "sq", "no", "nr", "mt", "ft", "apt", "ste", "hwy", "blvd"}
    | {"ul", "al", "u", "nám", "tř", "nábř", "p.o", "o"}
)


def _sentence_end(line: str, upper_next: bool = False) -> int | None:
    """Where a sentence ends in an address line (". ", "! ", ": "), not counting the dot of an
    abbreviation ("Apt. 5", "St. Louis", "ul. Karpacka"); with `upper_next`, only before a capital."""
    for m in re.finditer(r"[.!?:](?=\s)", line):
        if upper_next and not re.match(r"\s+[A-Z]", line[m.end() :]):
            continue
        word = re.search(r"[\w.]*$", line[: m.start()])
        if m.group(0) == "." and word and word.group(0).lower() in _ABBREVIATIONS:
            continue
        return m.start()
    return None


def luhn_ok(digits: str) -> bool:
    """The Luhn checksum that every payment card number passes."""
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = int(ch)
        if i % 2:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return total % 10 == 0


# Issuer prefixes of 12-19 digit card numbers: Visa 4, Mastercard 51-55 and 2221-2720, Amex 34/37,
# Diners 30/36/38/39, JCB 35 and 2131/1800, Discover/UnionPay 6, Maestro 50 and 56-69, Mir 2200-2204.
_CARD_PREFIX = re.compile(r"^(?:[3-6]|2[2-7]|2131|1800)")


class ExactIbanRecognizer(_RegexRecognizer):
    """IBANs, compact or in groups, taken at their country's exact length (entity `IBAN_CODE`).

    presidio's IbanRecognizer regex is case-insensitive and runs on over the next word ("Konto
    CZ81... abgebucht." reads "...9942 abgeb"), so the checksum fails and the IBAN is left. Here a
    country code and check digits start a run of letters and digits (single spaces or dashes
    between groups); the longest prefix that python-stdnum validates (structure, length and
    mod-97 for that country) is the IBAN.
    """

    ENTITY = "IBAN_CODE"
    # "gb50mvfc..." typed in lower case too
    PATTERNS = ((re.compile(r"(?<![A-Za-z0-9])[A-Za-z]{2}\d{2}(?:[ \-]?[A-Za-z0-9]){10,30}"), 0, 1.0, "iban"),)

    def extent(self, text: str, start: int, end: int, check: str) -> tuple[int, int] | None:
        """The longest prefix of the run that ends a group (before a space or dash) and validates."""
        value = text[start:end]
        ends = [i for i in range(len(value), 14, -1) if i == len(value) or not value[i].isalnum()]
        return next(((start, start + i) for i in ends if iban.is_valid(value[:i])), None)


class LuhnCardRecognizer(_RegexRecognizer):
    """Card numbers of 12-19 digits (grouped by spaces or dashes, or not) with a card prefix and Luhn.

    presidio's CreditCardRecognizer regex only knows 13-16 digit Visa/MC/Amex/Discover layouts: it
    misses 12-digit Maestro, 19-digit Visa, 2-series Mastercard and 15-digit 2131 JCB numbers.
    """

    ENTITY = "CREDIT_CARD"
    # not inside a longer number or a decimal; after a comma it may be (a CSV field)
    PATTERNS = ((re.compile(r"(?<![\w.+\-/])\d(?:[ \-]?\d){11,18}(?![\w\-]|[.,]\d)"), 0, 0.9, "card"),)

    def accept(self, value: str, check: str) -> bool:
        """Luhn-valid, a card issuer prefix, and one kind of separator at most."""
        digits = re.sub(r"\D", "", value)
        if not 12 <= len(digits) <= 19 or (" " in value and "-" in value):
            return False
        return bool(_CARD_PREFIX.match(digits)) and luhn_ok(digits)


_PHONE_CONTEXT = re.compile(
    # whole words: not "tel" of "Bestellnummer", "cell" of "cancellation", "ring" of "string"
    r"(?i)(?:\b(?:phone|smartphone|tel|telephone|mobile|cell|call|ring|text|sms|whats ?app|whats|zap|signal|fax|"
    r"contact|reach)|"
    # "number", not a tracking, order or serial number's ("the tracking number is 123456789")
    r"(?<!tracking\s)(?<!order\s)(?<!invoice\s)(?<!serial\s)(?<!ticket\s)(?<!case\s)(?<!model\s)(?<!part\s)"
    r"(?<!reference\s)(?<!confirmation\s)(?<!version\s)(?<!build\s)number|no\.|nr\.?|dial|landline|hotline|extension|teléfono|telefono|téléphone|telefon|handy|móvil|"
    r"celular|portable|tlf|телефон|тел|"
    # "mon numero c'est le", "joindre au", "bel me op", "chiamami al": number and call words of chat exports
    r"\bnum[eé]ro|\bnúmero|\bnumer\b|\bnummer|\bčíslo|\bszám|\bjoindre|\bappel(?:er|ez|le)\b|\bllám|\bllama|"
    r"\bchiama|\bligar?\b|\banruf|\berreichbar|\bbel\b|\bbellen|\bzadzwo|\bdzwo|\bzavolej|\bhívj|\bring\w*|"
    r"📞|☎|📱|\bbizum|\bmb[ \t]?way|\bvipps|\bmobilepay|\bswish|\btwint|\bblik\b|\bvenmo|\bzelle|"
    # a signature's phone label on its own line: "M: 8218 1508", "T. 352 8106", "Mob: ..."
    r"(?:^|\n)[ \t]*(?:[mtphwcof]|mob|ph|tlf|cel)\.?[ \t]*[:.][ \t]*$)"
    r"\W{0,4}(?:\w+\W{1,4}){0,6}$"
)
_SEP = r"[ \-.]"
_EXT = r"(?:[ \t]*(?:x|ext\.?|extension|#)[ \t]*\d{1,6})?"
_PHONE_PATTERNS = (
    # +41 (0)96 123 45 67, +1-903-140-4508x769, 0044 20 7946 0958: a country code makes it a phone
    (
        re.compile(rf"(?<![\w+])(?:\+|00)[1-9]\d{{0,2}}(?:{_SEP}?\(0\))?(?:{_SEP}?\(?\d{{1,5}}\)?){{2,6}}{_EXT}(?!\w)"),
        "international",
    ),
    # (415) 555-0198, (37) 788-063, (0)20 7946 0958
    (re.compile(rf"(?<![\w)])\(\d{{1,5}}\){_SEP}?\d{{2,8}}(?:[ \-./]\d{{2,5}}){{0,3}}{_EXT}(?![\w(])"), "parens"),
    # 0191 4960657, 03662 585178, 08/377-8353, 0232781286: a trunk 0 and an area code (Europe, UK, Asia)
    (re.compile(r"(?<![\w.\-,/+#])0\d{1,4}(?:[ \-/]?\d{2,8})(?:[ \-/.]\d{2,5}){0,3}(?!\w|[.,\-/]\d)"), "trunk"),
    # 25/851-7812, 12 3915-0008, 06-3/740 6812: an area code, then 3-4 and 4 digits (Hungary, Brazil)
    (re.compile(r"(?<![\w.\-,/#])(?:06-\d/|\(?\d{2}\)?/|\d{2} )\d{3,4}[\- ]\d{4}(?!\w|[.,\-/]\d)"), "area"),
    # 22 657 07 04: four or more space-separated groups
    (re.compile(r"(?<![\w.\-,])\d{2,4}(?: \d{2,4}){3,4}(?!\w|[.,\-]\d)"), "groups"),
    # 5272868387: ten digits that make a North American number (area and exchange codes start 2-9)
    (re.compile(r"(?<![\w.\-,+#])[2-9]\d{2}[2-9]\d{6}(?!\w|[.,\-]\d)"), "nanp_bare"),
    # 415-867-5309, 415.867.5309, 1-800-555-0199, 903-140-4508x769
    (
        re.compile(rf"(?<![\w.\-+])(?:1[ \-.])?[2-9]\d{{2}}([ \-.])\d{{3}}\1\d{{4}}{_EXT}(?!\w|[.\-]\d)"),
        "nanp",
    ),
    # 60-56-85-91, 06 12 34 56 78: four or five pairs
    (re.compile(r"(?<![\w.\-])\d{2}([ \-.])\d{2}(?:\1\d{2}){2,3}(?!\w|[.\-]\d)"), "pairs"),
    # 9472 7916, 467 3395, 030 1234567, 0171-1234567: local numbers, with context only
    (re.compile(r"(?<![\w.\-,])\d{2,5}([ \-.])\d{2,8}(?:\1\d{2,5}){0,3}(?!\w|[.,\-]\d)"), "local"),
    # 4155550198 / 07700900123 / 64873488 (8 digits: Denmark, Norway): a run of digits, with context only
    (re.compile(r"(?<![\w.\-,+])0?\d{8,11}(?!\w|[.,\-]\d)"), "bare"),
)
_EXTENSION = re.compile(r"[ \t]*(?:x|ext\.?|extension|#)[ \t]*\d{1,6}$")


# "gave me 5839 9207 and said text him", "... 0487 23 46 71, ring me": a call request just after the number
_PHONE_AFTER = re.compile(
    # Hungarian names the number after it: "a 616 1670 számon hívjanak", "a 64873488 telefonszámon"
    r"(?i)[ \t]+(?:telefon)?szám(?:on|ra|ot)\b|"
    r"(?i:[ \t,;:–-]*(?:(?:and|&|then|so)[ \t]+)?(?:(?:said|asked|told[ \t]+me)[ \t]+(?:to[ \t]+)?)?"
    r"(?:text|call|ring|phone|sms|whats ?app|message|bel|appelle|llama|chiama|ruf)\w*"
    r"[ \t]+(?:me|him|her|them|us|mich|ihn|sie|moi|le|la|mi|lo|hem|haar|mnie)\b)"
)


_EMAIL_WORD = re.compile(r"[\w.+\-]+@[\w\-]+(?:\.[\w\-]+)+")


def phone_word_before(text: str, start: int, end: int | None = None) -> bool:
    """Whether a phone word ("call", "tel.", "reach me on") comes shortly before `start`, or a call
    request ("text him") shortly after `end`; not after an order's or a build's number word."""
    if thing_number_before(text, start):
        return False
    # an email address before the number is one word of the phrase ("contact me, ana.b@x.com or 800 5834")
    window = _EMAIL_WORD.sub("@", text[max(0, start - 160) : start])[-60:]
    if _PHONE_CONTEXT.search(window) is not None:
        return True
    return end is not None and _PHONE_AFTER.match(text, end) is not None


_DATE_LIKE = re.compile(r"^(?:\d{1,2}[./\-]\d{1,2}[./\-](?:\d{2}|\d{4})|\d{4}[./\-]\d{1,2}[./\-]\d{1,2})$")
_IPV4_LIKE = re.compile(r"^\d{1,3}(?:\.\d{1,3}){3}$")


_PHONE_RUN = re.compile(r"\+?\(?\d(?:[ \-.()/]{0,2}\d)*\)?")


def phone_extent(text: str, start: int, end: int) -> tuple[int, int] | None:
    """The whole digit group around a tagger's phone guess, or None when it is no phone.

    The Rampart tagger often labels part of a number ("23 46" of "0487 23 46 71"): the guess grows
    to the run of digits and single separators it sits in, which must hold 7-15 digits and not be a
    date or an IPv4 address.
    """
    for m in _PHONE_RUN.finditer(text, max(0, start - 24), min(len(text), end + 24)):
        if m.start() < end and start < m.end():
            start, end = min(start, m.start()), max(end, m.end())
    value = text[start:end]
    digits = sum(c.isdigit() for c in value)
    if (
        not 7 <= digits <= (11 if value.isdigit() else 15)
        or _DATE_LIKE.match(value.strip())
        or _IPV4_LIKE.match(value.strip())
    ):
        return None
    return start, end


def uncovered_digit_groups(text: str, start: int, end: int, covered: list[tuple[int, int]]) -> bool:
    """Whether text[start:end] holds a phone-sized digit group (7+ digits) that no span covers yet."""
    for m in _PHONE_RUN.finditer(text, start, end):
        value = m.group(0)
        digits = sum(c.isdigit() for c in value)
        grouped = not value.isdigit()  # 12 or 13 bare digits are a timestamp or an id rather than a phone
        if 7 <= digits <= (15 if grouped else 11) and not any(s <= m.start() and m.end() <= e for s, e in covered):
            return True
    return False


class ChatPhoneRecognizer(_OwnRecognizer):
    """Phone numbers as people write them, valid or not (entity `PHONE_NUMBER`).

    presidio's PhoneRecognizer keeps only what libphonenumber calls valid in 8 regions, so it
    drops local numbers without an area code, dash pairs, short bracketed numbers and fictional
    US numbers (555, x-extensions); it is also the costliest recognizer. Here a country code,
    brackets, a trunk 0 and area code, the US 3-3-4 layout (or ten digits that fit it), four dash
    pairs or four space-separated groups are a phone on their own; other digit groups
    (local numbers, bare runs) only after a phone word ("call me on 9472 7916") or alone in a field.
    Dates, IPv4 and years are never phones.
    """

    ENTITY = "PHONE_NUMBER"
    STRONG = frozenset({"international", "parens", "nanp", "pairs", "trunk", "groups", "nanp_bare", "area"})

    def analyze(
        self, text: str, entities: list[str], nlp_artifacts: NlpArtifacts | None = None
    ) -> list[RecognizerResult]:
        """Every phone-shaped digit group that passes the rules above."""
        if self.ENTITY not in entities or sum(c.isdigit() for c in text) < 6:
            return []
        out: list[RecognizerResult] = []
        taken: list[tuple[int, int]] = []
        for pattern, kind in _PHONE_PATTERNS:
            for m in pattern.finditer(text):
                start, end = m.span()
                value = m.group(0)
                digits = sum(c.isdigit() for c in _EXTENSION.sub("", value))  # "001-755-515-7994x7847"
                if (
                    any(s < end and start < e for s, e in taken)
                    or not 6 <= digits <= 15
                    or _DATE_LIKE.match(value)
                    or _IPV4_LIKE.match(value)
                ):
                    continue
                if (kind == "trunk" and not 9 <= digits <= 13) or (kind == "groups" and digits < 9):
                    continue
                if kind not in self.STRONG:
                    if re.fullmatch(r"\d+\.\d+", value):  # "approximately 314.0185" is a decimal
                        continue
                    alone = text.strip() == value  # a field holding only this number (a JSON leaf, a form cell)
                    # six digits are a local number in small countries ("call 33 93 31"), only after a phone word
                    if not (alone and digits >= 7) and not (phone_word_before(text, start, end) and digits >= 6):
                        continue
                    groups = re.findall(r"\d+", value)
                    if len(groups) == 2 and len(groups[0]) == 4 and 1900 <= int(groups[0]) <= 2100:
                        continue  # "2023 1234" reads as a year and a number
                out.append(RecognizerResult(self.ENTITY, start, end, 0.75 if kind in self.STRONG else 0.6))
                taken.append((start, end))
        return out


# what a number may be named for that is no person's id: orders, invoices, parcels, products, phones,
# houses, pages, versions and builds, tickets, flights and seats (in the languages of chat exports),
# and the words of maths and code ("prime number", "port number", "line number")
_NOT_ID_STEM = (  # beginnings of such words ("shipment", "Bestellnummer", "zamówienia")
    r"bestel|rechnung|sendung|artikel|serien|version|ticket|auftrag|order|factu|faktur|track|invoice|receipt|"
    r"quot|estimate|bill|purchase|sku|upc|ean|isbn|asin|ship|parcel|package|deliver|waybill|zending|pakket|"
    r"paket|haus|huis|telefo|phone|handy|mobil|cell|tel|fax|rendelés|ház|termék|model|produ|build|zimmer|kamer|"
    r"seite|pagina|page|versie|vlucht|flug|flight|zug|trein|sitz|platz|stoel|gleis|spoor|commande|suivi|"
    r"billet|vol|chambre|pedido|seguimiento|vuelo|habitaci|ordine|fattur|bigliett|camera|zamówi|przesył|lot|"
    r"pokoj|objedn|zásilk|let|számla|járat|szob|ordre|pakke|fly|værelse|encomenda|fatura|rastre|quarto|"
    r"serial|case|reference|confirmation|booking|reservation|house|room|seat|gate|line|item|batch|job|issue|"
    r"bug|pull|commit|column|table|error|exit|sequence|block|process|thread|session|request|transaction|event|"
    r"record|entry|node|prime|random|magic|large|small|whole|complex|natural|decimal|binary|hex|integer|float|"
    r"total|given|specific|certain|following|previous|next|first|second|third|last|final|average|lucky|"
    r"favou?rite|winning|lottery|correct|wrong"
)
_NOT_ID_THING = r"po|hus|voo|ref|part|port|row|step|big|real|odd|even|mean|max|min"  # whole words only
# the words a number follows in any sentence ("my number", "the same number"): no id's name either
_NOT_ID_WORD = (
    r"same|new|old|full|right|any|which|what|this|that|the|your|my|his|her|our|their|its|mein|dein|sein|ihr|"
    r"unser|mon|ton|son|mi|tu|su|mio|tuo|mój|twój|můj|tvůj|az|een|het|din|meu|teu|seu|minha|tua|sua|uma|una|"
    r"ein|une|la|le|el|il|lo|de|der|die|das|den|dem|des|du|da|do|di|of|a|an"
)
_NOT_ID_NAME = rf"(?!(?:{_NOT_ID_STEM})\w*\b|(?:{_NOT_ID_THING}|{_NOT_ID_WORD})\b)"
# a number named for a thing whose numbers are no one's id, ending just before a value ("build number ")
_THING_NUMBER = re.compile(
    rf"(?i)(?:\b(?:(?:{_NOT_ID_STEM})\w*|(?:{_NOT_ID_THING}))[ \t]+(?:number|no\.|nr\.?|nummer|numéro|número|numero|#)"
    rf"|\b(?:{_NOT_ID_STEM})\w*(?:nummer|nr\.?|szám))[ \t]*(?:is|was|ist|er|:|#)?[ \t]*$"
)


def thing_number_before(text: str, start: int) -> bool:
    """Whether the value at `start` follows an order's, a build's or a line's number word."""
    return _THING_NUMBER.search(text, max(0, start - 60), start) is not None


_ID_KEYWORDS = (
    r"passport(?:\s+(?:no\.?|number|num|#|id))?|tax\s+(?:id|number|code|file\s+number|reference)|t\.?i\.?n\.?|"
    r"itin|ein|vat\s+(?:no\.?|number|id)|ssn|social\s+security(?:\s+(?:no\.?|number))?|"
    r"national\s+(?:id|identity|insurance)(?:\s+(?:card\s+)?(?:no\.?|number))?|ni\s+number|nino|"
    r"id\s+(?:card\s+)?(?:no\.?|number|#)|identity\s+(?:card\s+)?(?:no\.?|number)|"
    r"driv(?:er'?s?|ing)\s+licen[cs]e(?:\s+(?:no\.?|number|#))?|licen[cs]e\s+(?:no\.?|number|#|plate)|dl\s*#|"
    r"(?:bank\s+|checking\s+|savings\s+)?account(?:\s+(?:no\.?|number|#|num))|acct\.?(?:\s+(?:no\.?|#|number))?|"
    r"routing(?:\s+(?:no\.?|number))?|sort\s+code|aba|bsb|"
    r"(?:member(?:ship)?|customer|employee|patient|student|policy|insurance|medical\s+record)\s+(?:id|no\.?|number|#)|"
    r"mrn|nhs\s+(?:no\.?|number)|health\s+card(?:\s+number)?|"
    r"dni|nie|nif|cpf|cnpj|curp|rfc|rut|cuit|codice\s+fiscale|steuer-?id|steuernummer|steuer-?identifikationsnummer|"
    r"personalausweis(?:nummer)?|reisepass(?:nummer)?|bsn|pesel|nip|personnummer|henkilötunnus|cpr|ahv|"
    r"numéro\s+(?:fiscal|de\s+sécurité\s+sociale|d'identification)|insee|aadhaa?r|pan(?:\s+(?:card|no\.?|number))?|sin|"
    r"número\s+de\s+(?:pasaporte|cuenta|identificación|seguro\s+social)|pasaporte|ausweis|rodné\s+číslo|"
    r"номер\s+паспорта|паспорт|инн|снилс|"
    # member, customer and insurance numbers in the languages of chat exports ("Lidnummer", "Versichertennummer")
    r"lidnummer|lidmaatschap(?:snummer)?|klantnummer|mitgliedsnummer|kundennummer|versichertennummer|"
    r"versicherungsnummer|numéro\s+(?:de\s+client|d'adhérent|d’adhérent|de\s+membre)|"
    r"número\s+de\s+(?:socio|cliente)|numero\s+(?:cliente|socio|tessera)|numer\s+(?:klienta|członkowski)|"
    r"členské\s+číslo|kundenummer|medlemsnummer|"
    # account, customer and contract numbers and tax ids of chat exports ("číslo zákaznického účtu")
    r"číslo\s+(?:zákaznického\s+)?účtu|zákaznické\s+číslo|číslo\s+smlouvy|numer\s+(?:konta|rachunku|umowy)|"
    r"ügyfélszám|ügyfélazonosító|számlaszám|adóazonosító(?:\s+jel\w*)?|személyi\s+igazolvány(?:\s*szám\w*)?|"
    r"szig\.?\s*szám\w*|taj(?:-?\s*szám\w*)?|"
    r"vertragsnummer|kontonummer|kontonr\.?|numéro\s+de\s+contrat|número\s+de\s+contrato|numero\s+di\s+contratto|"
    r"contractnummer|aftalenummer|cpr-nummer|rg|"
    # insurance policies ("polisnummer", "número de póliza"), and any compound "...nummer"/"...szám" that
    # names no order, invoice, parcel, product, phone or house ("Versicherungsscheinnummer", "kötvényszám")
    r"numéro\s+de\s+police|número\s+de\s+póliza|numero\s+di\s+polizza|numer\s+polisy|číslo\s+pojist(?:ky|né\s+smlouvy)|"
    r"número\s+da\s+apólice|"
    rf"(?!(?:{_NOT_ID_STEM})\w*)[^\W\d_]{{3,}}(?:nummer|nummeret|numret|nr\.?|szám(?:a|om)?)|"
    # passports and identity cards in the languages of chat exports ("numéro de passeport", "dowód osobisty")
    r"(?:numéro\s+de\s+)?passeport|(?:numer\s+)?dowodu(?:\s+osobistego)?|dowód\s+osobisty|numer\s+paszportu|"
    r"číslo\s+(?:pasu|op|občanky|občanského\s+průkazu)|útlevél(?:szám)?|személyi(?:\s+igazolvány)?|paspoort(?:nummer)?|"
    r"pasnummer|passnummer|(?:número\s+do\s+)?passaporte|(?:numero\s+di\s+)?passaporto|carta\s+d'identità|"
    r"documento\s+(?:de\s+identidad|d'identità)|"
    # driving licences in the languages of chat exports ("patente n. X", "Führerscheinnummer X")
    r"patente(?:\s+di\s+guida)?|permiso\s+de\s+conducir|carnet\s+de\s+conducir|führerschein(?:nummer)?|"
    r"permis(?:\s+de\s+conduire)?|rijbewijs(?:nummer)?|prawo\s+jazdy|prawa\s+jazdy|řidičsk(?:ý|ého)\s+průkaz\w*|"
    r"kørekort(?:nummer)?|carteira\s+de\s+motorista|cnh|jogosítvány(?:szám)?"
)
# the keywords above that are also common words of a chat export's languages (German "ein", Spanish
# "sin", "niño", Polish "nie", "pan"): an id's name only right before its value
_ID_KEYWORDS_AMBIGUOUS = r"ein|sin|nie|pan|rg|aba|nino|taj|rut|nip|rfc|cnh"
# what follows an amount of money, not an id ("1234567 won", "250000 zł", "11.400 kr.")
_CURRENCY = (
    r"won|eur|euros?|€|usd|dollars?|\$|£|gbp|pounds?|kr\.?|kroner|kronor|kronen|zł|zl|złotych|pln|ft|forint|huf|"
    r"czk|kč|korun|chf|francs?|yen|¥|jpy|reais|r\$|brl|pesos?|mxn|rub|rubles?|рублей|руб|rupees?|inr|₹|lei|ron"
)
# words that may stand between an id's keyword and its value ("o CPF que usei foi X", "mein Ausweis ist X")
_ID_FILLER = (
    r"que|usei|foi|é|era|is|was|i|used|mine|my|the|es|ist|est|c'est|jest|to|je|mi|mio|il|la|el|le|der|die|"
    r"das|utilisé|usado|genutzt|használt|az|a|mój|moje|mein|meine|mon|ma|"
    r"det|er|var|min|mit|hendes|hans|med|het|mijn|zijn|haar|är"  # Nordic and Dutch: "cpr med? det er X"
)
_ID_VALUE = r"(?=[A-Z0-9\- /.]*\d)(?:[A-Z]{1,4}[ \-]?)?\d[\dA-Z]*(?:[ \-/.]\d[\dA-Z]*){0,5}(?:[ \-]?[A-Z]{1,2}\b)?"


class IdNumberRecognizer(_RegexRecognizer):
    """Passport, tax, licence, account and national ids named by a keyword (entity `ID_NUMBER`).

    The value after the keyword ("passport no. X1234567", "Steuer-ID: 12 345 678 901") must hold
    at least 4 digits; presidio's US-only recognizers see few of these and need exact layouts.
    """

    ENTITY = "ID_NUMBER"
    PATTERNS = (
        # any other thing's number with 6+ digits: "my library card number 29837465", "polis nummer X",
        # "numéro de sociétaire X" (`_NOT_ID_NAME`: not the things whose numbers are no one's id)
        (
            re.compile(
                rf"(?i:\b{_NOT_ID_NAME}[^\W\d_]{{3,}}[ \t]+"
                r"(?:number|no\.|nr\.?|nummer|numer|numéro|número|numero|číslo|szám))(?!\w)"
                r"[ \t]*(?i:is|es|ist|est|è|je|jest|er|é|was|:|#|=)?[ \t]*"
                rf"({_ID_VALUE})"
            ),
            1,
            0.6,
            "named",
        ),
        (
            re.compile(
                r"(?i:\b(?:numéro|número|numero|numer|číslo|nummer|number)[ \t]+"
                r"(?:(?:de|di|do|da|du|of|del|della|des)[ \t]+)?"
                rf"(?:(?:la|le|el|il|lo|the|l')[ \t]*)?{_NOT_ID_NAME}[^\W\d_]{{3,}})"
                r"[ \t]*(?i:is|es|est|è|je|jest|é|was|:|#|=)?[ \t]*"
                rf"({_ID_VALUE})"
            ),
            1,
            0.6,
            "named",
        ),
        # the value later in the sentence or the next, 6+ digits, with no other number between ("says the
        # passport number doesnt match IRS records. i typed K64363363", "o cpf dele pra eu ver que é
        # confiável: 478030234588", "mit pasnummer med, er det normalt? det er 785964455255"); not after
        # a keyword that is also a common word ("ein", "sin", "nie"), which names an id only next to it
        (
            re.compile(
                rf"(?i:\b(?!(?:{_ID_KEYWORDS_AMBIGUOUS})\b)(?:{_ID_KEYWORDS}))(?!\w)[^\d\n]{{1,100}}?"
                # not an amount: "the renewal costs 1234567 won"
                rf"(?<![\w.\-/$€£¥₹])({_ID_VALUE})(?!\w)(?![ \t]*(?i:{_CURRENCY})(?!\w))"
            ),
            1,
            0.6,
            "named",
        ),
        (
            re.compile(
                rf"(?i:\b(?:{_ID_KEYWORDS}))"
                # its value under a sibling key of JSON: {"type": "tax id", "number": "74-9783379"}
                r"(?:[\"']\s*,\s*[\"']?(?i:(?:[a-z]+_)*(?:number|value|no|num|nr|id))[\"']?\s*[:=])?"
                rf"\??(?:\s+(?i:{_ID_FILLER}|of|:)(?!\w)\??){{0,3}}[\s:#=\"'`(]*(?:(?i:no\.?|number|nr\.?|n\.|n°|nº|č\.)\s*)?"
                rf"({_ID_VALUE})"
            ),
            1,
            0.8,
            "digits",
        ),
    )

    def accept(self, value: str, check: str) -> bool:
        """At least 4 digits (6 after a number named for anything), and not a year or a date."""
        digits = sum(c.isdigit() for c in value)
        return digits >= (6 if check == "named" else 4) and not _DATE_LIKE.match(value.strip())


_INLINE_IDS = IdNumberRecognizer()  # stateless: one for every inline code segment


def inline_ids(text: str, start: int, end: int) -> list[tuple[int, int]]:
    """Ids inside the inline code [start, end) of prose, named by the words before it ("her passport
    no. `TE2373183`"): code is scanned on its own, without the keyword."""
    before = max(0, start - 80)
    found = _INLINE_IDS.analyze(text[before:end], ["ID_NUMBER"])
    return [(before + r.start, before + r.end) for r in found if before + r.start >= start]


# names that are common English words ("may", "grace", "will"): no name without a cue, in any case
_COMMON_NAME_WORDS = frozenset(
    (
        "may", "mark", "bill", "rose", "grace", "joy", "faith", "summer", "april", "sue", "don", "gene", "ray",
        "chase", "dawn", "lane", "young", "brown", "white", "black", "green", "king", "long", "hill", "wood",
        "hall", "ward", "page", "cook", "price", "bell", "rich", "love", "best", "moon", "day", "little",
        "case", "frank", "max", "gray", "guy", "jack", "will", "hope", "major", "rock", "august", "art", "pat",
        "car", "low",
    )
)


def _first_names() -> frozenset[str]:
    """Lower-case first and last names (Faker's en_US lists) that are not common English words."""
    from faker.providers.person.en_US import Provider

    return frozenset(n.lower() for n in (*Provider.first_names, *Provider.last_names)) - _COMMON_NAME_WORDS


NAME_GAZETTEER = _first_names()
# the lower-case words inside a person's name ("Matthias de Bont", "Victor van de Elzas")
NAME_PARTICLES = frozenset({"van", "von", "de", "der", "den", "da", "das", "dos", "di", "du", "del", "della", "le"})
_PARTICLE_WORDS = "(?:" + "|".join(sorted(NAME_PARTICLES)) + ")"
# Faker's Latin-script locales of Europe and the Americas, whose first names `first_names` reads
_FIRST_NAME_LOCALES = (
    "cs_CZ", "da_DK", "de_AT", "de_CH", "de_DE", "en_GB", "en_IE", "en_US", "es_ES", "es_MX", "es_AR", "es_CL",
    "es_CO", "et_EE", "fi_FI", "fr_FR", "fr_BE", "fr_CH", "fr_CA", "hr_HR", "hu_HU", "is_IS", "it_IT", "lt_LT",
    "lv_LV", "nl_NL", "nl_BE", "no_NO", "pl_PL", "pt_BR", "pt_PT", "ro_RO", "sk_SK", "sl_SI", "sv_SE", "tr_TR",
)
# first names of some locale that are common words of another: lower case at least twice, or capitalised
# without being a proper noun (German nouns: "Tage", "Lage"), in the dev splits of the UD treebanks that
# bench/pii_multilingual.py tests on (es, de, fr, nl, it, pl, pt); "Ella", "Per", "Mia" open sentences,
# "Reino Unido", "La Paz", "Cabo Verde" are places
_FIRST_NAME_WORDS = frozenset(
    (
        "abril", "ale", "alla", "alta", "amor", "ani", "anni", "ante", "april", "armas", "asu", "aura", "bas",
        "bassi", "beni", "beste", "blanca", "bonnie", "campo", "canal", "cara", "cas", "che", "cielo", "corona",
        "del", "dom", "domingo", "don", "donna", "durante", "día", "ebbe", "einer", "ela", "ella", "esa",
        "esperanza", "esteri", "flor", "gallego", "gloria", "hanno", "inna", "jaki", "juni", "kort", "kristall",
        "lady", "lage", "leider", "line", "lot", "lotta", "love", "lundi", "luz", "maire", "mar", "marino",
        "mars", "mia", "mio", "nada", "nas", "nazi", "nova", "ora", "oscar", "oto", "pacífica", "pastor", "paz",
        "per", "pero", "rana", "reina", "reine", "reino", "rok", "romaine", "saga", "salud", "sami", "segundo",
        "sem", "sera", "sol", "tage", "tali", "tan", "toma", "tránsito", "uma", "una", "uno", "van", "vega",
        "ver", "verde", "victoire", "victoria", "vida", "vide", "villa", "ville", "vita", "vitória", "von",
        "wille",
    )
)
# first names that are common words only in lower case, so never counted when they open a sentence
# ("Marco": a frame, "Lisa": smooth, "Kim": whom), but names inside one
FIRST_NAME_OPENERS = frozenset(
    (
        "aimé", "alma", "amie", "anders", "beau", "ben", "bent", "cristiana", "dag", "dan", "demi", "helena",
        "julio", "kent", "kim", "lana", "lisa", "luce", "marco", "marina", "mila", "mona", "máxima", "máximo",
        "norma", "romain", "roman", "romano", "sam", "signe", "sue",
    )
)


def _faker_names(attrs: tuple[str, ...]) -> set[str]:
    """The lower-case words (3+ letters) of the names under `attrs` of Faker's `_FIRST_NAME_LOCALES`
    person providers, each word of a compound ("Maria Eduarda", "Jean-Luc") on its own."""
    import importlib

    out: set[str] = set()
    for locale in _FIRST_NAME_LOCALES:
        try:
            provider = importlib.import_module(f"faker.providers.person.{locale}").Provider
        except ImportError:  # a locale this Faker version lacks
            continue
        for attr in attrs:
            names = getattr(provider, attr, ())
            for name in names if isinstance(names, (list, tuple, dict)) else ():
                out.update(w.lower() for w in re.split(r"[\s\-]+", name) if len(w) >= 3 and w.isalpha())
    return out


@functools.cache
def first_names() -> frozenset[str]:
    """Lower-case first names of Faker's European and American locales minus common words
    (`_FIRST_NAME_WORDS`): the names an English-trained tagger has not seen ("Světlana", "Remedios")."""
    return frozenset(_faker_names(("first_names", "first_names_female", "first_names_male")) - _FIRST_NAME_WORDS)


@functools.cache
def listed_first_names() -> frozenset[str]:
    """`first_names` with the ones that are common words elsewhere ("Mar", "Einer"), for a word listed
    beside a found person ("Jsme Jana Nováková a Einer"), where the list says it is a name."""
    return frozenset(first_names() | (_FIRST_NAME_WORDS - NAME_PARTICLES))


@functools.cache
def surnames() -> frozenset[str]:
    """Lower-case surnames of the same locales ("johansen", "kolka", "mota"), for `lower_full_names`."""
    return frozenset(
        _faker_names(("last_names", "last_names_female", "last_names_male", "male_last_names", "unisex_last_names"))
    )


_LOWER_FULL_NAME = re.compile(
    rf"(?<![\w'’\-@./])([a-zà-ÿ\u0100-\u017f]{{3,}})[ \t]+((?:{_PARTICLE_WORDS}[ \t]+){{0,2}})"
    r"([a-zà-ÿ\u0100-\u017f][a-zà-ÿ\u0100-\u017f'’\-]+)(?![\w'’\-@]|\.\w)"
)


def lower_full_names(text: str) -> list[tuple[int, int]]:
    """[start, end) of the lower-case full names in `text` ("nora johansen", "rafael da mota"): a known
    first name that is no common English word (`first_names`, not "will", "grace") before a known
    surname, one of the two unknown to Rampart's lexicon (not "jasmine rice"). For text whose writer
    does not capitalise, where case tells a name from a word no more."""
    lexicon = common_words() or frozenset()
    names, family = first_names(), surnames()
    out = []
    for m in _LOWER_FULL_NAME.finditer(text):
        first, last = m.group(1), m.group(3)
        known = first in names and first not in _COMMON_NAME_WORDS and last in family
        if known and (first not in lexicon or last not in lexicon):  # not "jasmine rice"
            out.append((m.start(), m.end()))
    return out


_NAME_WORD = rf"(?!(?:Mr|Mrs|Ms|Dr|Prof|Miss|Sir)\b)[{UPPER}А-ЯΑ-Ω][\w'’\-]*\w"
_LOWER_NAME_WORD = r"[a-zà-ÿ][a-zà-ÿ'’\-]*[a-zà-ÿ]"
# "My name is X" (any case after it), in the languages of chat exports
_NAME_CUES_ANY_CASE = (
    r"my\s+name\s+is|my\s+name's|i\s+am\s+called|(?:maiden|last|first|full|family|given|middle|real|legal|sur)\s?name\s+is|"
    r"me\s+llamo|mi\s+nombre\s+es|ich\s+heiße|ich\s+heisse|mein\s+name\s+ist|je\s+m'appelle|je\s+m’appelle|"
    r"mon\s+nom\s+est|mi\s+chiamo|il\s+mio\s+nome\s+è|meu\s+nome\s+é|eu\s+me\s+chamo|меня\s+зовут|"
    r"mijn\s+naam\s+is|ik\s+heet|nazywam\s+się|mam\s+na\s+imię|jmenuji\s+se|a\s+nevem|namn\s+är|hedder|"
    r"user'?s\s+name\s+is|the\s+user\s+is\s+called|you\s+are\s+talking\s+to"
)
_PERSON_FIELDS = (
    r"(?:full|first|last|given|family|contact|customer|client|account|card)[ \t]?(?:holder|name)|surname|holder|"
    r"nombre(?:[ \t]+(?:y[ \t]+apellidos?|completo))?|apellidos?|"
    r"nom(?:[ \t]+(?:et[ \t]+prénom|complet|de[ \t]+famille))?|"
    r"prénom|nome(?:[ \t]+(?:e[ \t]+cognome|completo))?|cognome|naam|voornaam|achternaam|volledige[ \t]+naam|"
    r"imię(?:[ \t]+i[ \t]+nazwisko)?|nazwisko|jméno(?:[ \t]+a[ \t]+příjmení)?|příjmení|(?:teljes[ \t]+)?név|"
    r"(?:fulde[ \t]+)?navn|vorname|nachname|(?:vollständiger[ \t]+)?name|"
    r"tenant|landlord|seller|buyer|vendor|purchaser|patient|guest|applicant|employee|witness|guardian|parent|"
    r"mieter(?:in)?|vermieter(?:in)?|verkäufer(?:in)?|käufer(?:in)?|inquilino|arrendador|arrendatario|vendedor|comprador|"
    r"locataire|bailleur|vendeur|acheteur|locatore|conduttore|venditore|acquirente|huurder|verhuurder|onderhuurder|"
    r"verkoper|koper|najemca|wynajmujący|sprzedający|kupujący|nájemce|pronajímatel|bérlő|bérbeadó|lejer|udlejer|"
    r"paciente|patiënt|pacjent|solicitante|candidat|bewerber(?:in)?|empleado|mitarbeiter(?:in)?|testigo|zeuge|"
    # payee and sender of a transfer or a letter: "Odbiorca: X", "Empfänger: X", "Címzett: X"
    r"odbiorca|nadawca|(?:zahlungs)?empfänger(?:in)?|absender(?:in)?|destinataire|expéditeur|expéditrice|"
    r"remitente|mittente|ontvanger|afzender|begunstigde|příjemce|odesílatel|címzett|feladó|kedvezményezett|"
    r"modtager|afsender|beneficiário|remetente|favorecido"
)
# a relative, friend or colleague named after the word for them: "my sister Anna", "meine Kollegin
# Jana", "mi hermano Luis", "a tesóm María" (Hungarian marks "my" with a suffix), in chat languages
_KIN = (
    r"(?:my|our)\s+(?:(?:little|big|older|younger|elder|best|step)\s+)?(?:sister|brother|sis|bro|wife|husband|"
    r"son|daughter|mom|mum|mother|dad|father|partner|girlfriend|boyfriend|fianc[ée]e?|cousin|aunt|uncle|niece|"
    r"nephew|grandma|grandpa|grandmother|grandfather|granddaughter|grandson|friend|colleague|co-?worker|boss|"
    r"manager|neighbou?r|roommate|flatmate|landlord|landlady|kid)|"
    r"(?:meine?|unsere?)\s+(?:schwester|bruder|frau|mann|sohn|tochter|mutter|vater|mama|papa|freundin|freund|"
    r"kollegin|kollege|chefin|chef|nachbarin|nachbar|cousine|cousin|tante|onkel|oma|opa|partnerin|partner)|"
    r"(?:ma|mon|notre)\s+(?:sœur|soeur|frère|femme|mari|fils|fille|mère|père|copine|copain|amie?|collègue|"
    r"patronne|patron|voisine|voisin|cousine|cousin|tante|oncle|compagne|compagnon)|"
    r"(?:mi|nuestr[oa])\s+(?:hermana|hermano|esposa|esposo|mujer|marido|hijo|hija|madre|padre|novia|novio|"
    r"amiga|amigo|compañera|compañero|jefa|jefe|vecina|vecino|prima|primo|tía|tío)|"
    r"(?:(?:la|il)\s+)?(?:mia|mio)\s+(?:sorella|fratello|moglie|marito|figlio|figlia|madre|padre|ragazza|"
    r"ragazzo|amica|amico|collega|capo|vicina|vicino|cugina|cugino|zia|zio)|"
    r"(?:minha|meu)\s+(?:irmã|irmão|esposa|esposo|mulher|marido|filho|filha|mãe|pai|namorada|namorado|amiga|"
    r"amigo|colega|chefe|vizinha|vizinho|prima|primo|tia|tio)|"
    r"(?:moja|mój|moj)\s+(?:siostra|brat|żona|mąż|syn|córka|mama|tata|dziewczyna|chłopak|koleżanka|kolega|"
    r"szef|szefowa|sąsiadka|sąsiad|kuzynka|kuzyn|ciocia|wujek)|"
    r"(?:mijn|onze?)\s+(?:zus|zuster|broer|vrouw|man|zoon|dochter|moeder|vader|vriendin|vriend|collega|baas|"
    r"buurvrouw|buurman|nicht|neef|tante|oom)|"
    r"(?:moje|můj|moji)\s+(?:sestra|bratr|žena|manželka|manžel|syn|dcera|máma|táta|přítelkyně|přítel|"
    r"kolegyně|kolega|šéf|šéfová|sousedka|soused)|"
    r"min\s+(?:søster|bror|kone|mand|søn|datter|mor|far|kæreste|veninde|ven|kollega|chef|nabo)|"
    r"(?:tesóm|testvérem|nővérem|húgom|bátyám|öcsém|feleségem|férjem|fiam|lányom|anyám|anyukám|apám|apukám|"
    r"barátnőm|barátom|kollégám|főnököm|szomszédom|unokatestvérem)"
)
# cues after which only capitalised words count ("Dear Anna", "Mr. Borkowski", "Name: Ola")
_NAME_CUES_CAPITALISED = (
    r"name\s*:|call\s+me|known\s+as|dear|hi|hello|hey|thanks|thank\s+you|regards,?|cheers,?|sincerely,?|signed,?|"
    r"i'm|i\s+am|mr\.?|mrs\.?|ms\.?|dr\.?|prof\.?|miss|señor|señora|sr\.?|sra\.?|herr|frau|monsieur|madame|mme\.?|"
    r"signor|signora|recipient|payee|beneficiary|addressee|attn\.?|attention|c/o|contact|"
    # titles of the languages of chat exports ("juf Grete", "pani Nowak", "hr. Jensen", "sig.ra Bianchi")
    r"juf|juffrouw|meneer|mevrouw|mevr\.|dhr\.|pan|pani|paní|pane|hr\.|fru|sig\.(?:ra)?|dott\.(?:ssa)?|"
    r"dottor|dottoressa|don|doña|dona|"
    # a surname named as one: "mit efternavn Plaza", "mijn achternaam is Bakker", "Nachname: Spieß"
    r"(?:efternavn(?:et)?|achternaam|nachname|familienname|nom\s+de\s+famille|apellidos?|cognome|nazwisko|"
    r"příjmení|vezetéknev(?:em)?|vezetéknév|sobrenome|last\s+name|surname|family\s+name)"
    r"(?:[ \t]+(?:er|is|ist|es|est|è|to|je|é|was|og|en))?|"
    # a transfer to someone: "un bonifico a X", "przelew do X", "Überweisung an X", "intestato a X"
    r"(?:bonifico|pagamento)\s+a|intestat[oa]\s+(?:proprio\s+)?a|przelew\s+(?:do|dla)|überweisung\s+an|"
    r"virement\s+(?:à|a)|transferencia\s+a|overboeking\s+(?:naar|aan)|převod\s+(?:na|pro)|"
    r"overførsel\s+til|transferência\s+para|"
    # a doorbell bears a surname: "ring the bell marked Zys", "Klingel: Nowak", "sonnette au nom de Roux"
    r"(?:door)?bell\s+(?:marked|label+ed|that\s+says|saying)|buzzer\s+(?:marked|label+ed|that\s+says|saying|for)|"
    r"klingel(?:schild)?\s*:|klingelschild\s+mit|sonnette\s+au\s+nom\s+de|campanello\s+(?:a\s+nome|con\s+scritto)|"
    r"dzwonek\s+z\s+napisem|zvonek\s+(?:se\s+jménem|s\s+nápisem)|dørklokken\s+med|bel\s+met\s+de\s+naam|"
    # greetings of the languages of chat exports ("Bonjour Amanda", "Liebe Gitte", "Cześć Piotr")
    r"bonjour|salut|coucou|cher|chère|hola|querid[oa]|estimad[oa]|hallo|liebe[rs]?|sehr\s+geehrte[rs]?|servus|moin|"
    r"ciao|salve|caro|cara|gentile|cześć|czesc|drog[ia]|olá|oi|prezad[oa]|hej|hoi|beste|kære|ahoj|szia|kedves|"
    # "Je suis X", "soy X", titles and account holders in other languages, a child named by a parent
    r"je\s+suis|soy|ich\s+bin|sono|jestem|sou|ik\s+ben|jsem|én|jeg\s+er|m\.|mlle\.?|soussignée?|soussigné\(e\)|"
    r"titular|titulaire|inhaber(?:in)?|kontoinhaber(?:in)?|intestatario|beneficiario|destinatario|"
    r"(?:mamá|mama|papá|papa|madre|padre|mère|père|mutter|vater|mamma|papà)\s+(?:de|von|di|do|da)|"
    # someone else named: "elle s'appelle X", "se llama X", "si chiama X", "hij heet X" (not German
    # "heißt": "das heißt" is "that is", before a capitalised noun)
    r"s'appelle|s’appelle|se\s+llama|si\s+chiama|se\s+chama|chama-se|heet|nazywa\s+się|jmenuje\s+se|hedder|"
    # form fields that hold a person, in the languages of chat exports ("Nombre y apellidos: X", "Käufer: X")
    rf"(?:{_PERSON_FIELDS})[ \t]*:|{_KIN}"
)
_SIGNOFF = (
    r"best|regards|kind\s+regards|best\s+regards|cheers|thanks|thank\s+you|sincerely|yours|love|saludos|atentamente|"
    r"grüße|gruß|cordialement|cordiali\s+saluti|pozdrawiam|s\s+pozdravem|bises|bisous|amitiés|besos|abrazos|"
    r"un\s+abrazo|un\s+saludo|liebe\s+grüße|viele\s+grüße|lg|mfg|groetjes|groeten|met\s+vriendelijke\s+groet|"
    r"hilsen|hilsner|mange\s+hilsner|kærlig\s+hilsen|venlig\s+hilsen|de\s+bedste\s+hilsner|hälsningar|mvh|baci|un\s+abbraccio|saluti|abraços|beijos|atenciosamente|pozdrowienia|buziaki|"
    r"üdvözlettel|puszi|szeretettel|várunk\s+szeretettel|köszi|üdv|"
    # thanks closing a message in the languages of chat exports ("Díky,\nRyan", "Dzięki,\nOla")
    r"díky|děkuji|dík|zdravím|dzięki|dziękuję|danke|merci|gracias|grazie|obrigad[oa]|bedankt|dank\s+je(?:\s+wel)?|"
    r"mange\s+tak|tak|köszönöm|kösz|"
    # the closings of formal letters ("Yours faithfully", "Mit freundlichen Grüßen", "Z poważaniem")
    r"yours\s+(?:faithfully|sincerely|truly)|sincerely\s+yours|best\s+wishes|warm(?:est)?\s+regards|many\s+thanks|"
    r"all\s+the\s+best|take\s+care|with\s+love|mit\s+freundlichen\s+grüßen|freundliche\s+grüße|"
    r"bien\s+(?:à\s+vous|cordialement)|saludos\s+cordiales|un\s+cordial\s+saludo|distinti\s+saluti|z\s+poważaniem|"
    r"s\s+úctou|tisztelettel|med\s+venlig\s+hilsen|met\s+vriendelijke\s+groeten|(?:com\s+os\s+melhores\s+)?cumprimentos"
)


_TECH_NAME = re.compile(TECH_NAMES)
_SIGNOFF_WORD = re.compile(rf"(?i:{_SIGNOFF}|grüße|grüsse|saludos|groet|regards)")


def signoff_word(value: str) -> bool:
    """A sign-off such as "Love", "Cheers" or "Pozdrawiam": NER reads one opening a line as a name."""
    return _SIGNOFF_WORD.fullmatch(value.strip()) is not None


def unknown_word(word: str) -> bool:
    """A lower-case word that can be a name: a known one (`NAME_GAZETTEER`), or none of the common
    words of Rampart's vocabulary and no "-ing"/"-ly"/"-ed" form ("raining", "chilly")."""
    lexicon = common_words()
    word = word.lower()
    if word in NAME_GAZETTEER:
        return True
    return lexicon is not None and word not in lexicon and not word.endswith(("ing", "ly", "ed"))


class NameCueRecognizer(_RegexRecognizer):
    """Names after words that announce one: "my name is X", "Dear X", "Regards,\\nX" (entity `PERSON`).

    NER misses exactly these in chat ("My name is Ola", a lower-case "my name is jens"). After the
    strong cues (my name is, me llamo...) up to three words of any case count; after the weak ones
    (Dear, Hi, Mr., call me) only capitalised words; a common word ("sorry", "there") is no name.
    """

    ENTITY = "PERSON"
    COMMON = frozenset(
        [
            "the",
            "a",
            "an",
            "all",
            "everyone",
            "everybody",
            "there",
            "guys",
            "team",
            "folks",
            "again",
            "you",
            "your",
            "my",
            "our",
            "this",
            "that",
            "it",
            "he",
            "she",
            "they",
            "we",
            "i",
            "me",
            "us",
            "them",
            "his",
            "her",
            "their",
            "what",
            "how",
            "why",
            "when",
            "where",
            "who",
            "which",
            "please",
            "sorry",
            "thanks",
            "thank",
            "hello",
            "hi",
            "hey",
            "dear",
            "sir",
            "madam",
            "here",
            "now",
            "today",
            "tomorrow",
            "yesterday",
            "yes",
            "no",
            "not",
            "ok",
            "okay",
            "well",
            "so",
            "and",
            "or",
            "but",
            "if",
            "then",
            "than",
            "also",
            "just",
            "very",
            "really",
            "good",
            "great",
            "happy",
            "glad",
            "sure",
            "new",
            "old",
            "first",
            "last",
            "next",
            "other",
            "some",
            "any",
            "each",
            "every",
            "one",
            "two",
            "three",
            "chatgpt",
            "gpt",
            "assistant",
            "ai",
            "bot",
            "user",
            "customer",
            "support",
            "admin",
            "god",
            "mom",
            "dad",
            "mum",
            "mother",
            "father",
            "friend",
            "friends",
            "world",
            "back",
            "going",
            "trying",
            "looking",
            "working",
            "writing",
            "using",
        ]
    )
    STOP_AFTER = frozenset({"and", "from", "at", "in", "of", "de", "y", "und", "et", "e", "i", "is", "am", "but"})
    PATTERNS = (
        (
            re.compile(
                rf"(?i:\b(?:{_NAME_CUES_ANY_CASE}))[ \t]+"
                rf"((?:{_NAME_WORD}|{_LOWER_NAME_WORD})(?:[ \t]+(?:{_NAME_WORD}|{_LOWER_NAME_WORD})){{0,2}})"
            ),
            1,
            0.95,  # above an NER LOCATION guess of the same word ("My name is Kenjirou")
            "strong",
        ),
        (
            re.compile(rf"(?i:\b(?:{_NAME_CUES_CAPITALISED}))[ \t]+({_NAME_WORD}(?:[ \t]+{_NAME_WORD}){{0,2}})"),
            1,
            0.5,
            "weak",
        ),
        # "Fiammetta's address", "Sepi's phone number": a personal possession names its owner (not after
        # "the", "our", "my"...: "the Company's address")
        (
            re.compile(
                r"(?<![\w.])(?<!(?i:the|our|his|her) )(?<!(?i:a) )(?<!(?i:my) )(?<!(?i:your|this) )"
                rf"({_NAME_WORD})['’]s[ \t]+(?:(?:home|new|old|current|mobile|cell|work|private|personal|corporate|"
                r"company|credit|debit|bank|e-?mail)[ \t]+)?(?:address|phone|number|email|birthday|"
                r"card|account|date[ \t]+of[ \t]+birth|wife|husband|"
                r"partner|son|daughter|mother|father|mom|mum|dad|sister|brother|boss|password|passport|ssn)\b"
            ),
            1,
            0.6,
            "weak",
        ),
        # "and tell Job the meeting moved": a request verb inside a sentence (lower case, so not the
        # title-case "Ask Questions Early"), then capitalised words
        (
            re.compile(
                r"(?<=\w\s|[,;]\s)(?:tell|ask|text|remind|invite|thank|ping|cc|message|congratulate|introduce)"
                rf"[ \t]+({_NAME_WORD}(?:[ \t]+{_NAME_WORD}){{0,2}})"
            ),
            1,
            0.5,
            "weak",
        ),
        # "ask for Evi", "vraag naar Job", "pregunta por Ana": whom to ask for. In English a capitalised
        # word after the cue is often a noun ("ask for Help"): there it must be no common word; in the
        # other languages of chat exports a capitalised word there is a name (German, which capitalises
        # nouns, is left out)
        (
            re.compile(rf"(?<![\w'’])ask(?:ed)?[ \t]+for[ \t]+({_NAME_WORD}(?:[ \t]+{_NAME_WORD})?)"),
            1,
            0.5,
            "here",
        ),
        (
            re.compile(
                r"(?<![\w'’])(?:vraag(?:[ \t]+dan)?[ \t]+naar|vragen[ \t]+naar|demande[rz]|chiedi(?:ete)?[ \t]+di|"
                r"chiedere[ \t]+di|pregunt(?:a|e|ad|ar)[ \t]+por|pergunt(?:a|e|ar)[ \t]+por|zeptejte[ \t]+se[ \t]+na|"
                r"zapytaj(?:cie)?[ \t]+o|spørg[ \t]+efter|kérdezd?[ \t]+meg)"
                rf"[ \t]+({_NAME_WORD}(?:[ \t]+{_NAME_WORD}){{0,2}})"
            ),
            1,
            0.5,
            "weak",
        ),
        # "sign my part as juliana", "signed it as Tom": the name a letter is signed with, any case (one
        # word when lower-case; "sign in as root" has no such cue)
        (
            re.compile(
                r"(?i:\bsign(?:ed)?(?:[ \t]+(?:it|this|that|my[ \t]+part|the[ \t]+letter|off))?[ \t]+as)[ \t]+"
                rf"({_NAME_WORD}(?:[ \t]+{_NAME_WORD})?|{_LOWER_NAME_WORD})"
            ),
            1,
            0.6,
            "strong",
        ),
        # a family by its surname: "Welcome to the Karalus house", "the Fábián family" (no common word:
        # not "the White House", "the Royal Family"), "Familie Beer", "la famille Gautier"
        (
            re.compile(
                rf"(?<![\w'’])(?i:the)[ \t]+({_NAME_WORD})[ \t]+"
                r"(?i:house(?:hold)?|family|residence|home|kids|twins)\b"
            ),
            1,
            0.5,
            "here",
        ),
        (
            re.compile(
                r"(?<![\w'’])(?:[Ff]amilie|[Ff]amille|[Ff]amilia|[Ff]amiglia|[Ff]amília|[Rr]odzin[aey]|[Rr]odin[ay]|"
                rf"[Ff]amilien|[Gg]ezin)[ \t]+({_NAME_WORD})"
            ),
            1,
            0.5,
            "weak",
        ),
        # a signature after the "-- " delimiter closing a message or a line ("... if stuck. -- Romolo")
        (
            re.compile(rf"(?m:^|(?<=[.!?][ \t]))--[ \t]*({_NAME_WORD}(?:[ \t]+{_NAME_WORD})?)(?=[ \t]*(?:$|[\"'\n]))"),
            1,
            0.9,  # above spaCy's 0.85, which a lone sentence-initial name loses without Rampart
            "weak",
        ),
        # "naar Jurre vragen": the Dutch word order
        (
            re.compile(
                rf"(?<![\w'’])naar[ \t]+({_NAME_WORD}(?:[ \t]+{_NAME_WORD})?)"
                r"[ \t]+(?:(?:moet|moeten|kunt|kan|te)[ \t]+)?vragen\b"
            ),
            1,
            0.5,
            "weak",
        ),
        # "Deszcz is my last name", "Ola is her first name": the name before the cue, any case
        (
            re.compile(
                rf"(?<![\w'’\-])({_NAME_WORD}|{_LOWER_NAME_WORD})[ \t]+"
                r"(?i:(?:is|was|'s)[ \t]+(?:my|his|her|their|your|our)[ \t]+"
                r"(?:(?:last|first|full|family|given|middle|real|legal|maiden|nick)[ \t]?|sur)name)\b"
            ),
            1,
            0.95,
            "strong",
        ),
        # the answer to a question for a name: "What's your last name? Koyama", "your name?\njens",
        # "¿Cómo te llamas? Lucía"; each word capitalised or no common word (`unknown_word`)
        (
            re.compile(
                r"(?i:\b(?:(?:your|his|her|their)[ \t]+(?:(?:first|last|full|family|given|middle|maiden|real|sur)"
                r"[ \t]?)?name|c[oó]mo[ \t]+te[ \t]+llamas|wie[ \t]+hei(?:ß|ss)t[ \t]+du|"
                r"comment[ \t]+tu[ \t]+t'appelles|come[ \t]+ti[ \t]+chiami|jak[ \t]+masz[ \t]+na[ \t]+imi[eę]|"
                r"hoe[ \t]+heet[ \t]+je|jak[ \t]+se[ \t]+jmenuješ|como[ \t]+te[ \t]+chamas|hvad[ \t]+hedder[ \t]+du)"
                r"[ \t]*\?)[ \t]*\n?[ \t]*"
                rf"((?:{_NAME_WORD}|{_LOWER_NAME_WORD})(?:[ \t]+(?:{_NAME_WORD}|{_LOWER_NAME_WORD})){{0,2}})"
            ),
            1,
            0.9,  # above spaCy's 0.85: a lone name after "?" is otherwise read as a sentence's first word
            "introduction",
        ),
        # "hey its piergiuseppe here", "It's Anna here": a self-introduction; a lower-case word must be
        # a known name or no common word (`unknown_word`: not "it's cold here")
        (
            re.compile(
                rf"(?i:\b(?:it'?s|it’s|it[ \t]+is|this[ \t]+is))[ \t]+"
                rf"((?:{_NAME_WORD}|{_LOWER_NAME_WORD})(?:[ \t]+(?:{_NAME_WORD}|{_LOWER_NAME_WORD}))?)"
                r"(?=[ \t]+(?i:here)\b)"
            ),
            1,
            0.9,
            "introduction",
        ),
        # "Gerhild Eckbauer hier.", "hoi!Anna here,": a name and "here" open a message; each word must
        # be a known name or no common word ("Click here.", "Start here:" are no names)
        (
            re.compile(
                rf"(?:^|(?<=[!?.,:\n]))[ \t]*({_NAME_WORD}(?:[ \t]+{_NAME_WORD})?)"
                r"(?=[ \t]+(?i:here|hier|aquí|ici|qui|tady|itt|her)[ \t]*(?:[.,!:;\n]|$))"
            ),
            1,
            0.9,
            "here",
        ),
        # a pasted chat log's speaker: "[10:42] Ruth Brandt: ...", "12/03/24, 10:44 - Ana Gil: ...",
        # "[Sat 09:12] Ida: ..."
        (
            re.compile(
                r"(?m)^[ \t]*\[?(?:[A-Z][a-zé]{1,8}\.?,?[ \t]+)?(?:\d{1,4}[./\-]\d{1,2}[./\-]\d{1,4},?[ \t]+)?"
                r"\d{1,2}:\d{2}(?::\d{2})?"
                rf"(?:[ \t]?[AaPp][Mm])?\]?[ \t]*(?:-[ \t]*)?({_NAME_WORD}(?:[ \t]+{_NAME_WORD}){{0,2}}):"
            ),
            1,
            0.9,
            "weak",
        ),
        # a Discord export's speaker line: "Zbyněk — Today at 8:50 PM", "Ana Gil — 12/03/2024 8:41 PM"
        (
            re.compile(
                rf"(?m)^[ \t]*({_NAME_WORD}(?:[ \t]+{_NAME_WORD}){{0,2}})[ \t]+[—–-][ \t]+"
                r"(?:(?:Today|Yesterday|Heute|Gestern|Aujourd'hui|Hier|Hoy|Ayer|Oggi|Ieri|Dzisiaj|Wczoraj|Vandaag|"
                r"Gisteren|Hoje|Ontem|Dnes|Včera|Ma|Tegnap|I dag|I går)"
                r"(?:[ \t]+(?:at|um|à|a las|alle|o|om|às|v|ve|kl\.))?"
                r"|\d{1,4}[./\-]\d{1,2}[./\-]\d{1,4})[ \t]+\d{1,2}:\d{2}(?:[ \t]?[AaPp][Mm])?[ \t]*$"
            ),
            1,
            0.9,
            "weak",
        ),
        # "X vagyok", "X jestem", "X jsem" ("I am X", the name first) opening a sentence: "Szia! Kovács
        # Péter vagyok, ...", "dzięki. Šimon jestem btw"
        (
            re.compile(
                rf"(?:^|(?<=[!?.,:;\n]))[ \t]*({_NAME_WORD}(?:[ \t]+{_NAME_WORD}){{0,2}})[ \t]+(?:vagyok|jestem|jsem)\b"
            ),
            1,
            0.9,
            "known",
        ),
        # a sign-off, a comma and a name closing the text or a quote ("... avant le 5. Bises, Flora'")
        (
            re.compile(
                rf"(?i:\b(?:{_SIGNOFF}))[ \t]*,[ \t]*({_NAME_WORD}(?:[ \t]+{_NAME_WORD})?)"
                r"(?=[ \t]*(?:$|[\"'’”.!)\n]))"
            ),
            1,
            0.6,
            "weak",
        ),
        # an abbreviated sign-off and a name closing the text or a quote, no comma needed ("... Vh Ísis
        # Andrade", "LG Anna", "Pozdr. Ola")
        (
            re.compile(
                r"(?:^|(?<=[\s.!?]))(?:[Mm]?[Vv][Hh]|[Mm][Vv][Gg]|LG|Lg|VG|Vg|MfG|BG|Pozdr\.?|Pzdr\.?|Üdv|Xoxo|xoxo)"
                rf"[ \t]*[,.]?[ \t]+({_NAME_WORD}(?:[ \t]+{_NAME_WORD})?)(?=[ \t]*(?:$|[\"'’”.!)\n]))"
            ),
            1,
            0.9,
            "weak",
        ),
        # a dash signing a message off after its last sentence, a known first name closing the line
        # ("yes, later. thanks!! — Xavier", "see you then! -Ola")
        (
            re.compile(
                rf"(?<=[.!?)])[ \t]+[—–~-][ \t]*({_NAME_WORD}(?:[ \t]+{_NAME_WORD})?)(?=[ \t]*(?:$|[\"'’”.!)\n]))"
            ),
            1,
            0.9,
            "known",
        ),
        # a sign-off line, then a name alone on the next line
        (
            re.compile(
                # "Grazie e cordiali saluti,": two sign-offs joined by "and" in the languages of chat exports
                rf"(?im:^[ \t]*(?:(?:{_SIGNOFF})[ \t]+(?:and|e|y|und|et|en|i|og|és|a)[ \t]+)?(?:{_SIGNOFF})"
                r"[ \t]*[,!.:]?[ \t]*\n[ \t]*)"
                # the name, particles allowed ("Job de Jong"), alone or with a note in brackets ("Jesper (je
                # buren op nummer 14)"); an address may follow
                rf"({_NAME_WORD}(?:[ \t]+(?:{_PARTICLE_WORDS}[ \t]+){{0,2}}{_NAME_WORD}){{0,2}})"
                r"[ \t]*(?:\([^()\n]{1,60}\)[ \t]*)?(?m:$)"
            ),
            1,
            0.9,  # above spaCy's 0.85 for the same span, so presidio keeps the cue's result: a lone
            # name opening a line is otherwise dropped as a capitalised verb ("Cook the chicken")
            "signoff",
        ),
    )

    def accept(self, value: str, check: str) -> bool:
        """Drop cue matches that are common words ("I'm sorry", "Hi there", "my name is not")."""
        words = value.split()
        if words[0].lower().strip("'’") in self.COMMON or _TECH_NAME.fullmatch(words[0]):
            return False
        if _SIGNOFF_WORD.fullmatch(words[0]):  # "Liebe Grüße", "Bonjour Cordialement"
            return False
        if check == "introduction":
            return all(w[:1].isupper() or unknown_word(w) for w in words)
        if check == "here":
            return all(unknown_word(w) for w in words)
        if check == "known":  # one of the words a known first name: not "Tak jsem" ("so I am")
            return any(w.lower() in first_names() or w.lower() in NAME_GAZETTEER for w in words)
        return check == "strong" or all(w[:1].isupper() for w in words if w not in NAME_PARTICLES)

    def analyze(
        self, text: str, entities: list[str], nlp_artifacts: NlpArtifacts | None = None
    ) -> list[RecognizerResult]:
        """Cue matches, each cut before the first common word ("jens and i" -> "jens")."""
        out = []
        for r in super().analyze(text, entities, nlp_artifacts):
            words = list(re.finditer(r"\S+", text[r.start : r.end]))
            for i, w in enumerate(words):
                particle = w.group(0) in NAME_PARTICLES and i + 1 < len(words) and words[-1].group(0)[:1].isupper()
                if i and w.group(0).lower() in self.COMMON | self.STOP_AFTER and not particle:
                    words = words[:i]
                    break
            out.append(RecognizerResult(self.ENTITY, r.start + words[0].start(), r.start + words[-1].end(), r.score))
        return out


# keys of structured data (JSON, YAML, Python dicts, query strings) whose value is personal: the value is
# PII whatever it looks like, in code too ("full_name": "Ana Lee"); a bare "name" only when its value
# reads as a person (tool and function schemas are full of "name": "get_weather"), and a city never
# (tool calls ask for the weather in "Paris")
_KEYED = {
    "PERSON": r"full_?name|first_?name|last_?name|given_?name|family_?name|sur_?name|middle_?name|maiden_?name|"
    r"customer_?name|contact_?name|account_?holder|cardholder(?:_?name)?|holder_?name|recipient(?:_?name)?",
    STREET_ADDRESS: r"street(?:_?address)?(?:_?\d)?|address(?:_?line)?(?:_?\d)?|addr\d?|line_?\d|"
    r"zip(?:_?code)?|postal_?code|post_?code|plz",
    "PHONE_NUMBER": r"phone(?:_?number)?|mobile|cell|tel|telephone",
    "EMAIL_ADDRESS": r"e_?mail(?:_?address)?",
    "IBAN_CODE": r"iban",
    "SECRET": r"password|passwd|pwd|pw|pass|secret|api_?key|token",
    # a person only when the value reads as one (`_person_value`): "name", "Contact", "holder", "owner"
    "NAME": r"name|contact|holder|owner|author|maintainer|assignee|reporter|payee|beneficiary|signatory|"
    # "name" in the languages of chat exports ("naam: Océane Coulon", "jméno", "navn")
    r"naam|nome|nombre|nom|imi[eę]|jm[eé]no|n[eé]v|navn|namn|"
    r"member|guest|tenant|attendee|participant|student|employee|patient|passenger|travell?er|customer|client|"
    r"buyer|seller|landlord|driver|parent|guardian|applicant|candidate|booked_?by|couple|bride|groom|spouse|"
    r"partner|parents|children|kids|guests|members|people|hosts?|organi[sz]er|speaker|coach|teacher|doctor",
    "ID_NUMBER": r"passport(?:_?(?:no|number))?|ssn|tax_?id|national_?id|licen[cs]e_?(?:no|number)|account_?number|"
    r"(?:customer|client|member|patient)_?(?:ref|reference|no|number)|"
    # Czech and Slovak business and tax ids, a sole trader's own ("ICO;castka" columns of an invoice export)
    r"i[cč]o|di[cč]",
}
_KEYED_VALUE = re.compile(
    r"(?i)(?<![\w-])[\"']?(?:[a-z]+_)*?(?:"  # any prefix (customer_, billing_, SMTP_), the shortest first
    + "|".join(f"(?P<k{i}>{v})" for i, v in enumerate(_KEYED.values()))
    + r")[\"']?[ \t]*(?::|=|=>)[ \t]*(?P<q>[\"'])(?P<value>[^\"'\n]{2,100})(?P=q)"
)


# the same keys with an unquoted value filling the rest of a config line: gitconfig/INI/HCL
# "name = Ana Lee", YAML "holder: Ana Lee", log fields "holder=Ana" are read by `_key_kind`'s value checks
_KEYED_LINE = re.compile(
    r"(?im)^[ \t]*(?:-[ \t]+)?(?P<key>(?:[a-z]+_)*?(?:" + "|".join(_KEYED.values()) + r"))[ \t]*[:=][ \t]*"
    r"(?P<value>[^\s\"'#{}\[\]][^\"'#\n{}]{0,99}?)[ \t]*(?:#.*)?$"
)
# a YAML block scalar under a personal key: "  address: |" and the lines indented deeper below it
_YAML_BLOCK = re.compile(
    r"(?im)^(?P<indent>[ \t]*)(?:-[ \t]+)?(?P<key>(?:[a-z]+_)*?(?:" + "|".join(_KEYED.values()) + r"))[ \t]*:[ \t]*"
    r"[|>][+\-]?[ \t]*\n(?P<block>(?:(?P=indent)[ \t]+[^\n]*(?:\n|$))+)"
)
# a log line's key=value fields: "iban=CZ3157...", holder="Ana Lee", billing_address="12 Main St, ..."
_LOG_FIELD = re.compile(
    r"(?i)(?<![\w.\-])(?P<key>(?:[a-z]+_)*?(?:" + "|".join(_KEYED.values()) + r"))="
    r"(?:\"(?P<quoted>[^\"\n]{2,100})\"|(?P<value>[^\s\"',;&]{2,100}))"
)
# git's author name on the command line: git config user.name "Ana Lee", --author="Ana Lee <a@b.c>"
_GIT_NAME = re.compile(r"(?i)(?:\buser\.name|--author)[ \t=]+[\"']([^\"'\n<]{2,80}?)[ \t]*(?:<[^>\n]*>)?[\"']")
# a string literal in code that mixes all four kinds of character ("4cLT3gjbM@vU"): a secret
_LITERAL = re.compile(r"([\"'])([^\s\"'\\/%{}]{8,64})\1")


# a template slot or a type name, not a value: "{zip}", "<name>", "${EMAIL}", "%s", "string"
_NOT_A_VALUE = re.compile(
    # a variable is one case ("$PGPASSWORD", "$db_pass"); "$wT6OfxVI" is a password
    r"^\s*(?:\{+[^{}]*\}+|<[^<>]*>|\$\{\w+\}|\$(?:[A-Z_][A-Z0-9_]*|[a-z_][a-z0-9_]*)\b|%\w|"
    r"(?i:str(?:ing)?|int(?:eger)?|number|text|null))\s*$"
)


def _person_value(value: str) -> bool:
    """A "name" value that reads as a person: 2-3 capitalised words, one of them a known name or no
    common word ("Sole Barzini"; not "get_weather", "Save File", "Main Menu"); a lower-case full
    name (`lower_full_names`); or people listed with "&", "and" or commas ("Flora & Ida"), each 1-3
    capitalised words, and one no common word."""
    people = [p.split() for p in re.split(r"\s*(?:&|,|\band\b|\bund\b|\bet\b|\by\b|\be\b|\bog\b|\ben\b)\s*", value)]
    if len(people) >= 2:
        words = [w for p in people for w in p if w not in NAME_PARTICLES]
        return (
            all(1 <= len(p) <= 3 for p in people)
            and all(re.fullmatch(rf"[{UPPER}][\w'’\-]*", w) for w in words)
            and any(unknown_word(w) for w in words)
        )
    if (0, len(value)) in lower_full_names(value):  # "name": "denis kadlecová"
        return True
    words = [w for w in value.split() if w not in NAME_PARTICLES]  # "Victor van de Elzas"
    return (
        2 <= len(words) <= 3
        and all(re.fullmatch(rf"[{UPPER}][\w'’\-]*", w) for w in words)
        and any(unknown_word(w) or (w.lower() in first_names() and w.lower() not in _COMMON_NAME_WORDS) for w in words)
    )


# an account's user name names its owner: a home directory ("/home/judith/mail", "C:\\Users\\jsmith\\"),
# a user key in a config, env file or call ("POSTGRES_USER: róża", "user='mkowalski'"), the user
# of a URL's credentials ("postgres://jan:pw@db"); not a service account ("root", "postgres", "${USER}")
_HOME_USER = re.compile(
    r"(?:(?<![\w.])/home/|(?<![\w.])/Users/|\b[A-Za-z]:\\+Users\\+)([^\W\d_][\w.\-]{2,31})"
    r"(?=[/\\]|[ \t\"'`]|$)"  # "/home/nicole/mail", "backup /home/nicole"
)
# the user of a remote login: "sftp:nicole@nas.local:/backup", "ssh jan@10.0.0.5", "rsync -a x kim@host:"
_REMOTE_USER = re.compile(
    r"(?i)(?:\b(?:sftp|scp|ssh|rsync|ftp|smb)(?::(?://)?|[ \t]+(?:-\w+[ \t]+)*)|[ \t])"
    r"([a-z][\w.\-]{2,31})@(?=[\w\-]+(?:\.[\w\-]+)*(?::|[ \t]|$))"
)
_USER_KEY = r"(?:[A-Za-z0-9]+_)*(?:user(?:_?name)?|login|db_?user)"
_CONFIG_USER = re.compile(
    # a whole line of YAML, .env or INI: "POSTGRES_USER: róża", "export DB_USER=ana", "- username: ana"
    rf"(?im)^[ \t]*(?:-[ \t]+)?(?:export[ \t]+)?[\"']?{_USER_KEY}[\"']?[ \t]*[=:][ \t]*[\"']?"
    r"([^\W\d_][\w.\-@]{1,63})[\"']?[ \t]*(?:#.*)?$"
    # a quoted value anywhere: "username": "ana", user='mkowalski', {"login": "j.smith"}
    rf"|(?i:(?<![\w-])[\"']?{_USER_KEY}[\"']?[ \t]*(?::|=|=>)[ \t]*)[\"']([^\W\d_][\w.\-@]{{1,63}})[\"']"
    # scheme://USER:password@host
    r"|\b[a-z][a-z0-9+.\-]*://([^\W\d_][\w.\-]{1,63}):[^\s/]+@"
)
_SERVICE_USERS = frozenset(
    {
        "user",
        "username",
        "users",
        "ubuntu",
        "runner",
        "root",
        "admin",
        "administrator",
        "app",
        "node",
        "pi",
        "vagrant",
        "jovyan",
        "circleci",
        "travis",
        "ec2-user",
        "www-data",
        "git",
        "deploy",
        "docker",
        "default",
        "public",
        "shared",
        "guest",
        "me",
        "you",
        "name",
        "your_user",
        "youruser",
        "postgres",
        "mysql",
        "mongo",
        "mongodb",
        "redis",
        "rabbitmq",
        "elastic",
        "sa",
        "sys",
        "system",
        "nobody",
        "daemon",
        "anonymous",
        "test",
        "testuser",
        "demo",
        "dev",
        "service",
        "backup",
        "replicator",
        "grafana",
        "jenkins",
        "nginx",
        "apache",
        "www",
        "http",
        "ftp",
        "true",
        "false",
        "none",
        "null",
        "changeme",
        "example",
    }
)


def account_users(text: str) -> list[tuple[int, int]]:
    """[start, end) of each personal account user name: in a home directory path, under a user key of
    a config or call, in a URL's credentials, or before the host of a remote login."""
    spans = [m.span(1) for m in _HOME_USER.finditer(text)]
    for m in _CONFIG_USER.finditer(text):
        # a pasted transcript's "User: thanks" is a message, not a config line: a bare "user" key's
        # one-word value counts only when it is no common word
        role = m.group(1) and _ROLE_LINE.match(m.group(0)) and not unknown_word(m.group(1))
        spans += [m.span(g) for g in (1, 2, 3) if m.group(g) and not role]
    spans += [m.span(1) for m in _REMOTE_USER.finditer(text)]
    return [(a, b) for a, b in spans if text[a:b].lower() not in _SERVICE_USERS]


_ROLE_LINE = re.compile(r"[ \t]*(?i:user):")


# SQL: INSERT INTO t (full_name, email, ...) VALUES ('błażej gałaj', ...), (...): the column names key the values
# a VALUES row: quoted strings may hold brackets ("'(26) 815-672'"), so they are read as a whole;
# possessive, so an unclosed row fails at once instead of backtracking over every "''" split
_SQL_ROW_BODY = r"(?:'(?:[^']|'')*+'|[^()'])*+"
_SQL_INSERT = re.compile(
    rf"(?is)\binsert\s+into\s+[\w.\"`\[\]]+\s*\(([^()]*)\)\s*values\s*((?:\({_SQL_ROW_BODY}\)\s*,?\s*)+)"
)
_SQL_ROW = re.compile(rf"\(({_SQL_ROW_BODY})\)")
_SQL_ITEM = re.compile(r"\s*(?:'((?:[^']|'')*)'|[^,]*)\s*(?:,|$)")


# a markdown table: a header row, its |---| rule, then rows; a personal column header keys its cells
_TABLE = re.compile(r"(?m)^[ \t]*(\|.*\|)[ \t]*\n[ \t]*\|[ \t]*:?-{2,}.*\|[ \t]*\n((?:[ \t]*\|.*\|[ \t]*(?:\n|$))+)")
_CELL = re.compile(r"\|([^|\n]*)(?=\|)")
_LINE = re.compile(r"[^\n]+")
_EMPTY_CELL = re.compile(r"[\s\-—–/?]*|(?i:n/?a|none|tbc|tbd|unknown)")


# CSV pasted into a chat: a header line of column names split by commas, semicolons or tabs, then
# the rows below it up to a blank or fence line; a personal column header keys its cells
_COLUMN = r"[A-Za-z_][\w \-]{0,40}"
_CSV_HEADER = re.compile(rf"(?m)^[ \t]*{_COLUMN}(?P<d>[,;\t])[ \t]*{_COLUMN}(?:(?P=d)[ \t]*{_COLUMN})*[ \t]*$")
_CSV_ROWS = re.compile(r"\n((?:(?![ \t]*(?:```|~~~))[^\n]*\S[^\n]*(?:\n|$))+)")


def table_columns(text: str) -> list[tuple[str, list[tuple[int, int]], list[str]]]:
    """(column name, [start, end) of each of its cells, stripped, the table's header) of every column
    of every markdown table in `text`."""
    out = []
    for m in _TABLE.finditer(text):
        header = _CELL.findall(m.group(1))
        lines = _LINE.finditer(text, m.start(2), m.end(2))
        rows = [list(_CELL.finditer(text, row.start(), row.end())) for row in lines]
        for j, column in enumerate(header):
            cells = []
            for row in rows:
                if j < len(row):
                    raw = row[j].group(1)
                    value = raw.strip()
                    start = row[j].start(1) + (raw.index(value) if value else 0)
                    cells.append((start, start + len(value)))
            out.append((column, cells, header))
    return out


def _csv_cells(text: str, start: int, end: int, delimiter: str) -> list[tuple[int, int]]:
    """[start, end) of each cell's value in the row text[start:end], quotes and padding left out.
    Hand-written: the csv module splits a row but gives no offsets, and a scrubber needs them."""
    cells = []
    i = start
    while True:
        while i < end and text[i] in " \t":
            i += 1
        if i < end and text[i] == '"':
            close = i + 1
            while close < end and (text[close] != '"' or text[close + 1 : close + 2] == '"'):
                close += 2 if text[close] == '"' else 1
            cells.append((i + 1, min(close, end)))
            nxt = text.find(delimiter, close, end)
        else:
            nxt = text.find(delimiter, i, end)
            stop = end if nxt < 0 else nxt
            while stop > i and text[stop - 1] in " \t\r":
                stop -= 1
            cells.append((i, stop))
        if nxt < 0:
            return cells
        i = nxt + 1


_CAPITALISED_NAME = re.compile(
    rf"[{UPPER}][\w'’\-]+(?:[ \t]+(?:(?:{'|'.join(sorted(NAME_PARTICLES))})[ \t]+){{0,2}}[{UPPER}][\w'’\-]+){{0,2}}"
)


_CAPITALISED_NAMES = re.compile(
    rf"{_CAPITALISED_NAME.pattern}(?:[ \t]*(?:&|,|\band\b|\bund\b|\bet\b|\by\b|\be\b|\bog\b|\ben\b)[ \t]*"
    rf"{_CAPITALISED_NAME.pattern})*"
)


def _contact_list(header: list[str]) -> bool:
    """Whether a table's columns are a contact list's: a name column and an email, phone or address one."""
    keys = [re.sub(r"[\s\-]+", "_", c.strip()).lower() for c in header]
    kinds = {next((k for k, p in _KEYED.items() if re.fullmatch(rf"(?i)(?:[a-z]+_)*(?:{p})", c)), None) for c in keys}
    return "name" in keys and bool(kinds & {"EMAIL_ADDRESS", "PHONE_NUMBER", STREET_ADDRESS})


def _personal_column(key: str) -> bool:
    """Whether a column or key name is one of `_KEYED`'s or an id keyword ("phone", "First Name")."""
    key = re.sub(r"[\s\-]+", "_", key.strip())
    return re.fullmatch(rf"(?i:{_ID_KEYWORDS})", key.replace("_", " ")) is not None or any(
        re.fullmatch(rf"(?i)(?:[a-z]+_)*(?:{p})", key) for p in _KEYED.values()
    )


_PHONE_CELL = re.compile(r"\+?[\d(][\d\s()\-./]{5,}\d")
_CONTACT_KEY = re.compile(r"(?i)(?:[a-z]+_)*(?:contact|kontakt|contacto|contato|contatto)")


def _key_kind(key: str, value: str) -> str | None:
    """The entity a table cell or SQL value under column `key` is (`_KEYED`, an id keyword), or None.
    A column is looser than a JSON key ("Phone" may list "iPhone 15", "Token" word pieces), so the
    value must also look its part: a phone's digits, an email's "@", a password's mix, a street's number."""
    key = re.sub(r"[\s\-]+", "_", key.strip())
    digits = sum(c.isdigit() for c in value)
    if re.fullmatch(rf"(?i:{_ID_KEYWORDS})", key.replace("_", " ")):
        return "ID_NUMBER" if digits >= 4 else None
    kind = next((k for k, p in _KEYED.items() if re.fullmatch(rf"(?i)(?:[a-z]+_)*(?:{p})", key)), None)
    if _CONTACT_KEY.fullmatch(key) and _PHONE_CELL.fullmatch(value):
        kind = "PHONE_NUMBER"  # a contact column holds names, emails and phones ("no nuts, 7539 3842")
    owner = re.fullmatch(r"(?i)(?:[a-z]+_)*(?:owner|author|maintainer|assignee|reporter)", key) is not None
    # keys that only ever hold people: any capitalised first names there ("couple: Flora & Ida")
    family = re.fullmatch(r"(?i)(?:[a-z]+_)*(?:couple|bride|groom|spouse|parents|children|kids|guests)", key)
    ok = {
        # "owner: kathleen": a lone known first name under an owner key (not "owner: sre", "owner: backend")
        "NAME": _person_value(value)
        or (owner and value.lower() in NAME_GAZETTEER)
        or (family is not None and _CAPITALISED_NAMES.fullmatch(value) is not None),
        "PHONE_NUMBER": digits >= 6 and re.fullmatch(r"[\d\s()+\-./x]+", value) is not None,
        "EMAIL_ADDRESS": "@" in value,
        # under a password key a value needs less than in prose: a pair's secret ("temp_pw=FCbvbv5509");
        # references to one ("${DB_PASS}", "<password>") are `_NOT_A_VALUE`
        "SECRET": looks_like_password(value) or pair_secret(value),
        "IBAN_CODE": digits >= 10,
        "ID_NUMBER": digits >= 4,
        STREET_ADDRESS: digits > 0 or has_street_word(value),
    }.get(kind or "", kind is not None)
    if not ok:
        return None
    return "PERSON" if kind == "NAME" else kind


# the password of a user/password pair in code: requests' auth=("ana", "pw"), HTTPBasicAuth("ana", "pw")
_AUTH_PAIR = re.compile(
    r"(?:\bauth[ \t]*=[ \t]*\(|\bHTTP(?:Basic|Digest)Auth\()[ \t]*([\"'])[^\"'\n]*\1[ \t]*,[ \t]*"
    r"([\"'])([^\"'\n]{4,128})\2"
)
# a vCard's personal properties (RFC 6350): "FN:Ana Gil", "N:Gil;Ana;;;", "TEL;TYPE=CELL:+34 ...",
# "ADR;TYPE=HOME:;;8, chemin Guy Mendès;Paris;;75011;France" (box; extended; street; town; region; code; country)
_VCARD_LINE = re.compile(r"(?im)^[ \t]*(FN|N|ADR|TEL|NICKNAME)(?:;[^:\n]*)?:([^\n]*?)[ \t]*$")
_VCARD_KIND = {"FN": "PERSON", "N": "PERSON", "NICKNAME": "PERSON", "ADR": STREET_ADDRESS, "TEL": "PHONE_NUMBER"}


# an iCalendar invite's people: "ATTENDEE;CN=Luiz Henrique Fogaça:mailto:..." (RFC 5545 common name)
_ICAL_NAME = re.compile(r"(?im)^[ \t]*(?:ORGANIZER|ATTENDEE)[^:\n]*?;CN=(\"?)([^\";:\n]+)\1")


def vcard_values(text: str) -> list[tuple[str, int, int]]:
    """(type, start, end) of each non-empty component of a vCard's name, address and phone lines,
    and of the people an iCalendar invite names."""
    out = [("PERSON", m.start(2), m.end(2)) for m in _ICAL_NAME.finditer(text)]
    for m in _VCARD_LINE.finditer(text):
        kind = _VCARD_KIND[m.group(1).upper()]
        for part in re.finditer(r"[^;]+", m.group(2)):
            value = part.group(0).strip()
            if value and not _NOT_A_VALUE.match(value):
                start = m.start(2) + part.start() + part.group(0).index(value)
                out.append((kind, start, start + len(value)))
    return out


def keyed_values(text: str) -> list[tuple[str, int, int]]:
    """(type, start, end) of each quoted value under a personal key ("zip": "37786", city='Maribo'),
    or in a personal column of a markdown table, a CSV paste or an SQL INSERT."""
    kinds = list(_KEYED)
    out = []
    for m in _KEYED_VALUE.finditer(text):
        kind = next(kinds[i] for i in range(len(kinds)) if m.group(f"k{i}"))
        if kind == "NAME":
            if not _person_value(m.group("value")):
                continue
            kind = "PERSON"
        value = m.group("value")
        generic = re.fullmatch(r"(?i)[\"']?line_?\d[\"']?", m.group(f"k{kinds.index(STREET_ADDRESS)}") or "")
        if generic and not (any(c.isdigit() for c in value) or has_street_word(value)):  # "line1": "Hello"
            continue
        if value.strip() and not _NOT_A_VALUE.match(value):
            out.append((kind, m.start("value"), m.end("value")))
    for m in _KEYED_LINE.finditer(text):
        value = m.group("value")
        kind = _key_kind(m.group("key"), value) if not _NOT_A_VALUE.match(value) else None
        if kind:
            out.append((kind, m.start("value"), m.end("value")))
    for m in _YAML_BLOCK.finditer(text):  # "address: |" and its indented lines
        lines = list(re.finditer(r"[^\s][^\n]*?(?=[ \t]*(?:\n|$))", m.group("block")))
        kind = _key_kind(m.group("key"), " ".join(line.group(0) for line in lines)) if lines else None
        if kind:
            out += [(kind, m.start("block") + line.start(), m.start("block") + line.end()) for line in lines]
    for m in _LOG_FIELD.finditer(text):
        group = "quoted" if m.group("quoted") is not None else "value"
        kind = _key_kind(m.group("key"), m.group(group)) if not _NOT_A_VALUE.match(m.group(group)) else None
        if kind:
            out.append((kind, m.start(group), m.end(group)))
    out += [("PERSON", m.start(1), m.end(1)) for m in _GIT_NAME.finditer(text) if not _NOT_A_VALUE.match(m.group(1))]
    out += vcard_values(text)
    out += [("SECRET", m.start(3), m.end(3)) for m in _AUTH_PAIR.finditer(text) if not _NOT_A_VALUE.match(m.group(3))]
    out += [("SECRET", m.start(2), m.end(2)) for m in _LITERAL.finditer(text) if _four_kinds(m.group(2))]
    # (column, cells, contact list) of markdown tables and CSV pastes; a contact list has a name column
    # beside an email, phone or address one
    grid = [(column, cells, _contact_list(header)) for column, cells, header in table_columns(text)]
    read = 0  # a header inside rows already read is a row, not a new table
    for m in _CSV_HEADER.finditer(text):
        delimiter = m.group("d")
        header = [c.strip() for c in m.group(0).split(delimiter)]
        if m.start() < read or not any(_personal_column(c) for c in header):
            continue
        rows = _CSV_ROWS.match(text, m.end())
        if rows is None:
            continue
        read = rows.end(1)
        lines = _LINE.finditer(text, rows.start(1), rows.end(1))
        cells = [_csv_cells(text, row.start(), row.end(), delimiter) for row in lines]
        contact = _contact_list(header)
        grid += [(column, [row[j] for row in cells if j < len(row)], contact) for j, column in enumerate(header)]
        # a row longer than its header has an unquoted comma ("Rua X, 98,05961233,Viana"): its last
        # cells are read against the last columns too
        long = [row for row in cells if len(row) > len(header)]
        grid += [(column, [row[j - len(header)] for row in long], contact) for j, column in enumerate(header)]
    for column, cells, contact in grid:
        kinds = [_key_kind(column, text[a:b]) if not _EMPTY_CELL.fullmatch(text[a:b]) else None for a, b in cells]
        people = ("PERSON" in kinds or contact) and re.fullmatch(r"(?i)name", column.strip()) is not None
        for (a, b), kind in zip(cells, kinds, strict=True):
            if kind is None and people and _CAPITALISED_NAME.fullmatch(text[a:b]):
                # a lone first name in a column of people ("Leandro" below "Ana Lee"), any name in a
                # contact list's name column ("Susanna Metz" beside an email column)
                kind = "PERSON"
            if kind:
                out.append((kind, a, b))
    for m in _SQL_INSERT.finditer(text):
        columns = [c.strip(' \t\n"`[]') for c in m.group(1).split(",")]
        for row in _SQL_ROW.finditer(text, m.start(2), m.end(2)):
            items = [i for i in _SQL_ITEM.finditer(text, row.start(1), row.end(1)) if i.group(0)]
            for column, item in zip(columns, items, strict=False):
                value = item.group(1)
                kind = _key_kind(column, value) if value else None
                if kind and value.strip() and not _NOT_A_VALUE.match(value):
                    out.append((kind, item.start(1), item.end(1)))
    return out
