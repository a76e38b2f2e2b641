"""SUV (body-weight standardised uptake value) of a PET volume, following the QIBA procedure.

SUVbw = activity concentration (Bq/mL) x body weight (g) / injected dose decayed to the time
the image is decay-corrected to (Bq); it is in g/mL, about 1 on average over the body.

**DICOM** (QIBA "SUV calculation" vendor-neutral pseudo-code, the common case): convert only
when ``Units`` is BQML, ``CorrectedImage`` includes ATTN and DECY, and ``DecayCorrection`` is
START (the image is corrected to the series start); the dose ``RadionuclideTotalDose`` is
decayed by ``RadionuclideHalfLife`` from the injection (``RadiopharmaceuticalStartDateTime``,
else ``SeriesDate`` + ``RadiopharmaceuticalStartTime``) to ``SeriesDate`` + ``SeriesTime``,
and ``PatientWeight`` is in kg. Anything missing or different is a one-line error naming the
tag.

**NIfTI** with a PET-BIDS ``_pet.json`` sidecar beside it (same name, ``.json``): the same
inputs are ``Units`` (Bq/mL), ``AttenuationCorrection`` (present, not "none") and
``ImageDecayCorrected`` (true), ``InjectedRadioactivity`` with
``InjectedRadioactivityUnits``, ``BodyWeight`` (kg), ``TracerRadionuclide`` (its half-life
from :data:`HALF_LIFE_S`), and the times ``InjectionStart`` and ``ImageDecayCorrectionTime``
(seconds relative to ``TimeZero``): BIDS states the decay-correction time explicitly, so the
dose is decayed from the injection to that time.
"""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path
from typing import Any

from ablate.errors import UserError

#: Physical half-lives (s) of the usual PET radionuclides (BIDS ``TracerRadionuclide``).
HALF_LIFE_S = {
    "F18": 6586.2,
    "C11": 1221.8,
    "O15": 122.24,
    "N13": 597.9,
    "GA68": 4062.6,
    "CU64": 45721.1,
    "ZR89": 282276.0,
    "RB82": 76.38,
}
#: BIDS ``InjectedRadioactivityUnits`` -> Bq.
_ACTIVITY_UNITS = {"bq": 1.0, "kbq": 1e3, "mbq": 1e6, "gbq": 1e9, "mci": 3.7e7, "uci": 3.7e4}
#: What the stored values are once converted (dataset metadata, MLflow, predicted header).
SUV_UNITS = "SUVbw (g/mL)"


def decayed_dose(dose_bq: float, half_life_s: float, elapsed_s: float) -> float:
    """The activity left of ``dose_bq`` after ``elapsed_s`` seconds."""
    return dose_bq * 2.0 ** (-elapsed_s / half_life_s)


def suv_factor_dicom(ds: Any, where: str) -> float:
    """Bq/mL -> SUVbw factor of a DICOM PET series (its first slice's header)."""

    def need(tag: str, source: Any = ds) -> Any:
        value = source.get(tag)
        if value is None or value == "":
            raise UserError(f"{where}: cannot compute SUV: DICOM tag {tag} is missing")
        return value

    units = str(need("Units")).upper()
    if units != "BQML":
        raise UserError(f"{where}: cannot compute SUV: Units is {units}, SUV needs BQML")
    corrected = {str(v).upper() for v in _as_list(need("CorrectedImage"))}
    if not {"ATTN", "DECY"} <= corrected:
        missing = " and ".join(sorted({"ATTN", "DECY"} - corrected))
        raise UserError(
            f"{where}: cannot compute SUV: CorrectedImage {sorted(corrected)} lacks {missing}"
        )
    decay = str(need("DecayCorrection")).upper()
    if decay != "START":
        raise UserError(
            f"{where}: cannot compute SUV: DecayCorrection is {decay}, QIBA's SUV needs START"
        )
    sequence = need("RadiopharmaceuticalInformationSequence")
    if not len(sequence):
        raise UserError(
            f"{where}: cannot compute SUV: the RadiopharmaceuticalInformationSequence is empty"
        )
    drug = sequence[0]
    dose = float(need("RadionuclideTotalDose", drug))
    half_life = float(need("RadionuclideHalfLife", drug))
    weight = float(need("PatientWeight"))
    series_time = _dicom_datetime(str(need("SeriesDate")), str(need("SeriesTime")))
    if drug.get("RadiopharmaceuticalStartDateTime"):
        text = str(drug.RadiopharmaceuticalStartDateTime)
        injection = _dicom_datetime(text[:8], text[8:])
    else:
        injection = _dicom_datetime(
            str(ds.SeriesDate), str(need("RadiopharmaceuticalStartTime", drug))
        )
    elapsed = (series_time - injection).total_seconds()
    return _factor(where, dose, half_life, elapsed, weight, "PatientWeight")


def suv_factor_sidecar(sidecar: Path) -> float:
    """Bq/mL -> SUVbw factor from a PET-BIDS ``_pet.json`` sidecar."""
    try:
        meta = json.loads(sidecar.read_text())
    except FileNotFoundError:
        raise UserError(
            f"{sidecar}: no sidecar: SUV from NIfTI needs a PET-BIDS _pet.json beside the image"
        ) from None
    except json.JSONDecodeError:
        raise UserError(f"{sidecar}: not valid JSON") from None

    def need(key: str) -> Any:
        if meta.get(key) in (None, ""):
            raise UserError(f"{sidecar}: cannot compute SUV: {key} is missing")
        return meta[key]

    units = str(need("Units"))
    if units.replace(" ", "").lower() not in ("bq/ml", "bqml", "bq.ml-1"):
        raise UserError(f"{sidecar}: cannot compute SUV: Units is {units}, SUV needs Bq/mL")
    if str(need("AttenuationCorrection")).strip().lower() in ("none", "no", "false"):
        raise UserError(f"{sidecar}: cannot compute SUV: AttenuationCorrection is none")
    if need("ImageDecayCorrected") is not True:
        raise UserError(f"{sidecar}: cannot compute SUV: ImageDecayCorrected is not true")
    unit = str(need("InjectedRadioactivityUnits")).lower()
    if unit not in _ACTIVITY_UNITS:
        raise UserError(
            f"{sidecar}: cannot compute SUV: InjectedRadioactivityUnits {unit} is not one of "
            f"{', '.join(_ACTIVITY_UNITS)}"
        )
    dose = float(need("InjectedRadioactivity")) * _ACTIVITY_UNITS[unit]
    nuclide = str(need("TracerRadionuclide")).upper().replace("-", "").replace("^", "")
    if nuclide not in HALF_LIFE_S:
        raise UserError(
            f"{sidecar}: cannot compute SUV: TracerRadionuclide {nuclide} has no known "
            f"half-life (known: {', '.join(HALF_LIFE_S)})"
        )
    elapsed = float(need("ImageDecayCorrectionTime")) - float(need("InjectionStart"))
    return _factor(str(sidecar), dose, HALF_LIFE_S[nuclide], elapsed, need("BodyWeight"), "")


def sidecar_of(nifti: Path) -> Path:
    """The BIDS sidecar beside a NIfTI image: ``x_pet.nii.gz`` -> ``x_pet.json``."""
    name = nifti.name
    for suffix in (".nii.gz", ".nii"):
        if name.lower().endswith(suffix):
            name = name[: -len(suffix)]
    return nifti.with_name(name + ".json")


def _factor(
    where: str, dose: float, half_life: float, elapsed: float, weight: Any, tag: str
) -> float:
    weight_kg = float(weight)
    if not (dose > 0 and half_life > 0 and weight_kg > 0):
        raise UserError(
            f"{where}: cannot compute SUV: dose {dose:g} Bq, half-life {half_life:g} s and "
            f"{tag or 'BodyWeight'} {weight_kg:g} kg must all be positive"
        )
    if elapsed < 0:
        raise UserError(
            f"{where}: cannot compute SUV: the image time is {-elapsed:g} s before the injection"
        )
    return weight_kg * 1000.0 / decayed_dose(dose, half_life, elapsed)


def _as_list(value: Any) -> list[Any]:
    return [value] if isinstance(value, str) else list(value)


def _dicom_datetime(date: str, time: str) -> datetime:
    """A DICOM DA + TM (``HHMMSS.ffffff``, fractions optional) as a datetime."""
    time = time.strip()
    whole, _, fraction = time.partition(".")
    whole = whole.ljust(6, "0")
    micro = int((fraction + "000000")[:6]) if fraction else 0
    try:
        out = datetime.strptime(date.strip() + whole[:6], "%Y%m%d%H%M%S")
    except ValueError:
        raise UserError(f"unreadable DICOM date/time {date!r} {time!r}") from None
    return out.replace(microsecond=micro)


def suv_factor(volume: Any) -> float:
    """The Bq/mL -> SUVbw factor of a :class:`ablate.volumes.Volume` (DICOM or NIfTI)."""
    if volume.kind == "dicom":
        return suv_factor_dicom(volume.dicom, str(volume.path))
    if volume.kind == "nifti":
        return suv_factor_sidecar(sidecar_of(volume.path))
    raise UserError(
        f"{volume.path}: an .npy array carries no dose or weight: SUV needs DICOM/NIfTI"
    )


def stored_units(volume: Any) -> str:
    """The units a volume's values are in as read: DICOM ``Units``, the sidecar's, or unknown."""
    if volume.kind == "dicom":
        return str(volume.dicom.get("Units", "") or "unknown")
    if volume.kind == "nifti":
        try:
            return str(json.loads(sidecar_of(volume.path).read_text()).get("Units", "unknown"))
        except (OSError, json.JSONDecodeError):
            return "unknown"
    return "unknown"
