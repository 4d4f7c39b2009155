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

import math
import re
from collections import Counter

import tldextract
from presidio_analyzer import LocalRecognizer, RecognizerResult
from presidio_analyzer.nlp_engine import NlpArtifacts
from presidio_analyzer.predefined_recognizers import EmailRecognizer, PhoneRecognizer, UrlRecognizer

SECRET = "SECRET"
STREET_ADDRESS = "STREET_ADDRESS"
IPV6 = "IP_ADDRESS"

# Chat text is full of strings that recognizers mistake for PII. Each is a full-match regex over
# the detected span (presidio's allow_list in "regex" mode), so "v1.2.3" is kept but an IP is not.
CHAT_ALLOWLIST: tuple[str, ...] = (
    r"^v?\d+\.\d+(?:\.\d+)?(?:[-.+]?(?:rc|a|b|alpha|beta|dev|post)\d*)?$",  # version numbers
    r"^(?:1[89]|20|21)\d{2}s?$",  # years and decades
    r"^\d{4}-\d{2}-\d{2}(?:[T ]\d{2}:\d{2}(?::\d{2}(?:\.\d+)?)?(?:Z|[+-]\d{2}:?\d{2})?)?$",  # ISO dates
    r"^\d{1,2}:\d{2}(?::\d{2})?(?:\s?[AaPp][Mm])?$",  # clock times
    r"^_?[a-z][a-z0-9]*(?:_[a-z0-9]+)+(?:\(\))?$",  # snake_case identifiers
    r"^[a-z]+[A-Z][A-Za-z0-9]*(?:\(\))?$",  # camelCase identifiers
    r"^(?:self|this|cls|np|pd|os|sys|torch|tf)\.[A-Za-z_][\w.]*(?:\(\))?$",  # code attribute access
    r"^(?:localhost|127\.0\.0\.1|0\.0\.0\.0|::1?)$",  # loopback and unspecified addresses
)


class OfflineEmailRecognizer(EmailRecognizer):
    """presidio's EmailRecognizer whose domain check uses tldextract's bundled suffix list only."""

    # suffix_list_urls=() means "never fetch"; cache_dir=None means "never read or write a cache".
    _EXTRACT = tldextract.TLDExtract(suffix_list_urls=(), cache_dir=None, fallback_to_snapshot=True)

    def validate_result(self, pattern_text: str) -> bool:
        """True when the part after '@' ends in a known public suffix."""
        return self._EXTRACT(pattern_text).fqdn != ""


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


class _RegexRecognizer(LocalRecognizer):
    """Base: a list of (regex, group, score, check) run over the whole text."""

    ENTITY = ""
    PATTERNS: tuple[tuple[re.Pattern[str], int, float, str], ...] = ()

    def __init__(self, supported_language: str = "en") -> None:
        super().__init__(supported_entities=[self.ENTITY], supported_language=supported_language)

    def load(self) -> None:
        """Nothing to load: the patterns are compiled at import."""

    def accept(self, value: str, check: str) -> bool:
        """Extra validation for a candidate value; `check` names the rule."""
        return True

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
                if end > start and self.accept(m.group(group), check):
                    out.append(RecognizerResult(self.ENTITY, start, end, score))
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
        (re.compile(r"\b[a-z][a-z0-9+.\-]*://[^\s:/@]+:([^\s@/]{3,})@"), 1, 0.9, ""),
        (re.compile(r"(?i)\bbearer\s+([A-Za-z0-9_\-.=~+/]{16,})"), 1, 0.85, "entropy"),
        # password-like assignments: any value of 6+ chars (passwords need not look random)
        (
            re.compile(r"(?i)\b(?:password|passwd|pwd|passphrase)\b[\"']?\s*(?:[:=]|\bis\b)\s*[\"']?([^\s\"',;]{6,})"),
            1,
            0.8,
            "",
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
        """Assignments only count when the value looks random: high entropy and mixed classes."""
        if check != "entropy":
            return True
        classes = sum(bool(re.search(p, value)) for p in (r"[a-z]", r"[A-Z]", r"\d"))
        return shannon_entropy(value) >= 3.5 and classes >= 2


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


_SUFFIX = (  # English and Romance street types, written as a separate word
    r"(?:Street|St|Road|Rd|Avenue|Ave|Av|Lane|Ln|Boulevard|Blvd|Drive|Dr|Court|Ct|Way|Place|Pl|Terrace|"
    r"Circle|Cir|Highway|Hwy|Parkway|Pkwy|Square|Sq|Trail|Trl|Crescent|Close|Row|Alley|Plaza|Walk|Hill|"
    r"Str|Mews|Grove|Gardens|Park)\.?(?![\w-])"
)
_COMPOUND = (  # Germanic/Nordic street types, usually glued to the name (Byvej, Hauptstraße)
    r"(?:straße|strasse|str\.|straat|gate|gata|gatan|vej|veien|vägen|weg|gasse|katu|kuja|tie|laan|plein|utca)"
    r"(?![\w-])"
)
_PREFIX = (  # street types written before the name (40 rue Victor Hugo, ul. Asnyka Adama 82)
    r"(?:Rue|Rua|R\.|Avenida|Av\.|Avenue|Via|Viale|Calle|C\.|Carrer|Piazza|Plaza|Place|Boulevard|Bd\.?|"
    r"ul\.|ulica|Chemin|Allée|Alameda|Travessa|Largo|Camino|Paseo|Praça)"
)
_W = r"(?:[A-ZÀ-ÞΑ-Ω][\w'.\-]*|\d{1,5}[A-Za-z]?)"  # a capitalised word or a house number
_PARTICLE = r"(?:de|da|das|do|dos|del|della|di|du|des|la|le|van|von|der|den|el|y)"
_ANY = r"[^\W\d_][\w'.\-]*"  # any word, any case or script (only used where a line is anchored)
_NUM = r"\d{1,6}[A-Za-z]?"
_UNIT = r"(?:,?\s*(?:Apt|Apartment|Suite|Ste|Unit|Flat|Floor|Fl|Room|Rm|#)\.?\s*#?\w{1,6})"
_STREET = rf"(?:(?:{_W}[ \t]+){{0,4}}?(?:{_W}[ \t]+{_SUFFIX}|[A-ZÀ-Þ][\w'À-ÿ\-]*{_COMPOUND}|{_W}[ \t]+{_COMPOUND}))"
_ADDRESS_PATTERNS = (
    # 12 Main Street [Apt 4]
    re.compile(rf"\b{_NUM},?[ \t]+{_STREET}{_UNIT}?", re.UNICODE),
    # Frørup Byvej 22 / Ingelbrecht Knudssøns gate 222 / Theofanus Street 162
    re.compile(rf"\b{_STREET}[ \t]+{_NUM}\b{_UNIT}?", re.UNICODE),
    # 40 rue Victor Hugo / Via Nazario Sauro 112 / ul. Asnyka Adama 82
    re.compile(
        rf"(?:\b{_NUM},?[ \t]+)?(?<![\w.])(?i:{_PREFIX})[ \t]+(?:(?:{_W}|{_PARTICLE})[ \t]+){{0,4}}{_W}"
        rf"(?:[ \t]+{_NUM}\b)?{_UNIT}?",
        re.UNICODE,
    ),
    re.compile(r"(?i)\b(?:P\.?\s?O\.?\s*Box|Post(?:al)?\s+Office\s+Box)\s+\d{1,7}\b"),
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
        r"(?:\b(?:USNS|USS|USCGC|Unit|PSC|CMR)\b[^\n]{1,40}\n[ \t]*)?\b(?:FPO|APO|DPO)[ \t]+(?:AA|AE|AP)[ \t]+\d{5}\b"
    ),
    # a unit line on its own (Apt. 363, Suite 594)
    re.compile(r"\b(?:Apt|Apartment|Suite|Ste)\.?[ \t]*#?\d{1,5}\b"),
)
# A following line counts as part of the address when it is short and looks like a unit, a city,
# a region, a postcode or a country (no sentence punctuation, starts with a letter or a digit).
_ADDRESS_LINE = re.compile(
    r"[ \t]*(?:[>?*\-][ \t]*)?(?!(?:Tel|Phone|Fax|Email|Mobile)\b)"
    r"[\w(][\w .,'()\-/#]{0,45}",
    re.UNICODE,
)
_TAIL = re.compile(rf"(?:,[ \t]*(?:{_W}[ \t]?){{1,4}}){{1,4}}", re.UNICODE)
_REST_OF_LINE = re.compile(rf"(?:,?[ \t]+{_W})+[ \t]*(?=\n|$)", re.UNICODE)
_POSTCODE_CONTEXT = re.compile(
    r"(?i:\b(?:zip ?code|zip|post ?code|postal code)s?\b)\W{0,12}?(?:is\s+|:\s*)?"
    r"(\d{3,5}(?:-\d{4})?|[A-Z]{1,2}\d[A-Z\d]? ?\d[A-Z]{2}|[A-Z]\d[A-Z] ?\d[A-Z]\d)\b"
)


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
                end = self._extend(text, m.end(group))
                out.append(RecognizerResult(self.ENTITY, m.start(group), end, 0.7))
        for m in _POSTCODE_CONTEXT.finditer(text):
            if any(c.isdigit() for c in m.group(1)):
                out.append(RecognizerResult(self.ENTITY, m.start(1), m.end(1), 0.6))
        return out

    @staticmethod
    def _extend(text: str, end: int) -> int:
        """Grow the span over a same-line tail (', Springfield, IL 62704') and up to 4 address lines."""
        tail = _TAIL.match(text, end)
        if tail:
            end = tail.end()
        rest = _REST_OF_LINE.match(text, end)
        if rest:
            end = rest.end()
        for _ in range(4):
            if not text.startswith("\n", end):
                break
            line = _ADDRESS_LINE.match(text, end + 1)
            stop = text.find("\n", end + 1)
            stop = len(text) if stop < 0 else stop
            candidate = text[end + 1 : stop]
            if (
                not line
                or line.end() != stop
                or re.search(r"[.!?:]\s|@", candidate)
                or sum(c.isdigit() for c in candidate) >= 7  # a phone or account number, not an address line
            ):
                break
            end = stop
        return end
