"""Secure Boot: is it on, is nvkmd's (or DKMS's) signing certificate
enrolled, and will the installed nvidia module load.

The state comes from the ``SecureBoot`` EFI variable under the efivars
directory (4 attribute bytes, then 1 = enabled), else from
``mokutil --sb-state``.  Enrolment is read from shim's ``MokListRT``
(an EFI signature list, in ``efivars`` or ``mok-variables``), else from
``mokutil --test-key``; where none of them can be read the answer is
"unknown", never a guess.  Which key signed a module comes from kmod's
``modinfo -F sig_key``, compared with each certificate's serial number
(``openssl x509 -serial``).
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import hashlib
import shutil
import struct
import subprocess
import uuid
from pathlib import Path

from nvkmd.config import Config
from nvkmd.paths import Paths
from nvkmd.procenv import child_env

EFI_GLOBAL_GUID = "8be4df61-93ca-11d2-aa0d-00e098032b8c"
SHIM_LOCK_GUID = "605dab50-e046-4300-abb6-3dd810dd8b23"
EFI_CERT_X509 = uuid.UUID("a5c059a1-94e4-4aa7-87b5-ab155c2bf072").bytes_le
EFI_CERT_SHA256 = uuid.UUID("c1c41626-504c-4092-aca9-41f936934328").bytes_le


@dataclasses.dataclass(frozen=True)
class CertInfo:
    path: str
    serial: str            # hex, upper case, no colons ("" if unreadable)
    enrolled: str          # "yes" | "no" | "unknown"
    used_by: str           # "nvkmd" | "dkms"


@dataclasses.dataclass(frozen=True)
class ModuleSig:
    path: str
    signed: bool
    key: str               # modinfo sig_key, normalised
    signer: str
    enrolled: str          # "yes" | "no" | "unknown" ("" when unsigned)


@dataclasses.dataclass(frozen=True)
class SecureBoot:
    state: str             # "enabled" | "disabled" | "unknown"
    state_from: str        # "efivars" | "mokutil" | ""
    certs: tuple[CertInfo, ...]
    module: ModuleSig | None
    hint: str

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


# -- reading the firmware's variables -----------------------------------------

def _efivar(paths: Paths, name: str, guid: str) -> bytes | None:
    try:
        data = (paths.efivars_dir / f"{name}-{guid}").read_bytes()
    except OSError:
        return None
    return data[4:] if len(data) >= 4 else None     # drop the attribute word


def state_from_efivars(paths: Paths) -> str | None:
    data = _efivar(paths, "SecureBoot", EFI_GLOBAL_GUID)
    if not data:
        return None
    return "enabled" if data[0] == 1 else "disabled"


def _mokutil(*args: str) -> tuple[int, str] | None:
    if not shutil.which("mokutil"):
        return None
    try:
        p = subprocess.run(["mokutil", *args], capture_output=True, text=True, env=child_env(),
                           stdin=subprocess.DEVNULL, timeout=30, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    return p.returncode, (p.stdout + p.stderr).strip()


def parse_sb_state(text: str) -> str:
    t = text.lower()
    if "secureboot enabled" in t:
        return "enabled"
    if "secureboot disabled" in t:
        return "disabled"
    return "unknown"


def sb_state(paths: Paths) -> tuple[str, str]:
    s = state_from_efivars(paths)
    if s:
        return s, "efivars"
    if paths.root == Path("/"):
        out = _mokutil("--sb-state")
        if out and parse_sb_state(out[1]) != "unknown":
            return parse_sb_state(out[1]), "mokutil"
    return "unknown", ""


def parse_signature_lists(data: bytes) -> tuple[list[bytes], list[bytes]]:
    """(X.509 certificates in DER, SHA-256 hashes) from EFI_SIGNATURE_LISTs."""
    certs, hashes = [], []
    off = 0
    while off + 28 <= len(data):
        sig_type = data[off:off + 16]
        list_size, header_size, sig_size = struct.unpack_from("<III", data, off + 16)
        if list_size < 28 or off + list_size > len(data) or sig_size <= 16:
            break
        p = off + 28 + header_size
        while p + sig_size <= off + list_size:
            payload = data[p + 16:p + sig_size]      # skip the owner GUID
            if sig_type == EFI_CERT_X509:
                certs.append(payload)
            elif sig_type == EFI_CERT_SHA256:
                hashes.append(payload)
            p += sig_size
        off += list_size
    return certs, hashes


def mok_list(paths: Paths) -> tuple[list[bytes], list[bytes]] | None:
    """shim's enrolled keys, or None when they cannot be read."""
    raw = b""
    found = False
    for i in ("", *map(str, range(1, 10))):      # MokListRT, MokListRT1, ... for big lists
        data = _efivar(paths, f"MokListRT{i}", SHIM_LOCK_GUID)
        if data is None:
            p = paths.mok_variables_dir / f"MokListRT{i}"
            try:
                data = p.read_bytes()
            except OSError:
                data = None
        if data is None:
            if i:
                break
            continue
        found = True
        raw += data
    return parse_signature_lists(raw) if found else None


# -- certificates and modules ---------------------------------------------------

PEM_HEADER, PEM_FOOTER = b"-----BEGIN CERTIFICATE-----", b"-----END CERTIFICATE-----"


def cert_der(path: Path) -> bytes | None:
    try:
        data = path.read_bytes()
    except OSError:
        return None
    if data.lstrip().startswith(b"-----BEGIN"):
        return _pem_to_der(data.strip())
    return data


def _pem_to_der(pem: bytes) -> bytes | None:
    """ssl.PEM_cert_to_DER_cert's rule without ssl: the daemon does not
    load ssl (and OpenSSL's libraries) at all (daemon/main.py)."""
    if not (pem.startswith(PEM_HEADER) and pem.endswith(PEM_FOOTER)):
        return None
    try:
        return base64.b64decode(pem[len(PEM_HEADER):-len(PEM_FOOTER)].decode("ascii"))
    except (UnicodeDecodeError, binascii.Error):
        return None


def cert_serial(path: Path) -> str:
    der = cert_der(path)
    if der is None or not shutil.which("openssl"):
        return ""
    p = subprocess.run(["openssl", "x509", "-inform", "DER", "-noout", "-serial"], input=der,
                       capture_output=True, env=child_env(), check=False)
    out = p.stdout.decode(errors="replace").strip()
    return _norm(out.split("=", 1)[1]) if p.returncode == 0 and "=" in out else ""


def _norm(key: str) -> str:
    return key.replace(":", "").strip().upper().lstrip("0")


def enrolled(paths: Paths, cert: Path) -> str:
    der = cert_der(cert)
    if der is None:
        return "unknown"
    moks = mok_list(paths)
    if moks is not None:
        certs, hashes = moks
        return "yes" if der in certs or hashlib.sha256(der).digest() in hashes else "no"
    if paths.root == Path("/"):
        out = _mokutil("--test-key", str(cert))
        if out:
            text = out[1].lower()
            if "not enrolled" in text:
                return "no"
            if "already enrolled" in text:
                return "yes"
    return "unknown"


def signing_certs(paths: Paths, config: Config) -> list[tuple[Path, str]]:
    out = []
    if config.signing_cert:
        out.append((paths.at(config.signing_cert), "nvkmd"))
    dkms_cert = paths.dkms_tree / "mok.pub"
    if dkms_cert.is_file():
        out.append((dkms_cert, "dkms"))
    return out


def module_signature(path: Path) -> tuple[str, str]:
    """(sig_key, signer) from kmod's modinfo; ("", "") for an unsigned module."""
    if not shutil.which("modinfo"):
        return "", ""
    p = subprocess.run(["modinfo", "-F", "sig_key", str(path)], capture_output=True, text=True,
                       env=child_env(), check=False)
    key = _norm(p.stdout.strip()) if p.returncode == 0 else ""
    p = subprocess.run(["modinfo", "-F", "signer", str(path)], capture_output=True, text=True,
                       env=child_env(), check=False)
    return key, p.stdout.strip() if p.returncode == 0 else ""


def hint_for(state: str, module: ModuleSig | None) -> str:
    """Pure: what a person should do."""
    if module is None or state == "disabled":
        return ""
    if not module.signed:
        return ("Secure Boot is on and the nvidia module is unsigned: it will not load; set "
                "signing.key/signing.cert and enrol the certificate with `mokutil --import`") \
            if state == "enabled" else ""
    if module.enrolled == "no":
        return ("the nvidia module is signed with a key that is not enrolled"
                + (": with Secure Boot on it will not load" if state == "enabled" else "")
                + "; enrol the certificate with `mokutil --import <cert>` and reboot")
    return ""


def check(paths: Paths, config: Config, module: Path | None) -> SecureBoot:
    state, where = sb_state(paths)
    certs = []
    for path, who in signing_certs(paths, config):
        certs.append(CertInfo(str(path), cert_serial(path), enrolled(paths, path), who))
    sig = None
    if module is not None:
        key, signer = module_signature(module)
        match = next((c for c in certs if c.serial and c.serial == key), None)
        sig = ModuleSig(str(module), bool(key), key, signer,
                        match.enrolled if match else ("unknown" if key else ""))
        if key and match is None and key in _mok_serials(paths):
            sig = dataclasses.replace(sig, enrolled="yes")
        # A key that is neither ours nor DKMS's nor in MokListRT may still be in
        # the kernel's built-in keyring (a distribution's key): "unknown".
    return SecureBoot(state, where, tuple(certs), sig, hint_for(state, sig))


def _mok_serials(paths: Paths) -> set[str]:
    moks = mok_list(paths)
    out: set[str] = set()
    for der in (moks[0] if moks else []):
        p = subprocess.run(["openssl", "x509", "-inform", "DER", "-noout", "-serial"], input=der,
                           capture_output=True, env=child_env(), check=False)
        s = p.stdout.decode(errors="replace").strip()
        if p.returncode == 0 and "=" in s:
            out.add(_norm(s.split("=", 1)[1]))
    return out

