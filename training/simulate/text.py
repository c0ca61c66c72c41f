"""Templated clinical notes in English or Chinese, one per patient, describing both hips.

History follows the classes the way it does in clinic. Osteonecrosis comes
after steroid use or heavy drinking. Femoroacetabular impingement affects young
active patients with groin pain on deep flexion and a positive impingement
test. Osteoarthritis affects older patients with years of pain and short
morning stiffness.
Notes are noisy on purpose: a risk factor is sometimes missing or present in
the wrong patient, a referral impression is sometimes wrong, irrelevant
history is mixed in and a symptom side is occasionally contradicted, so the
text alone cannot be a perfect classifier.

Chinese notes follow the usual outpatient record layout (主诉, 现病史, 既往史,
个人史, 体格检查, 初步诊断) with full-width punctuation.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

import numpy as np

from hipfuse.inference.types import HipClass, Laterality


class NoteLanguage(StrEnum):
    """Language of a clinical note (ISO 639-1)."""

    ENGLISH = "en"
    CHINESE = "zh"


class RiskFactor(StrEnum):
    """History item that raises the prior of osteonecrosis."""

    STEROID = "steroid"
    ALCOHOL = "alcohol"
    NONE = "none"


@dataclass(frozen=True)
class HipFacts:
    """Facts about one hip that a note is written from."""

    hip_class: HipClass
    painful: bool
    duration_months: int


@dataclass(frozen=True)
class NoteFacts:
    """Patient facts a note is written from.

    Attributes
    ----------
    age_years, sex
        Demographics (``M`` or ``F``).
    hips
        Facts per hip.
    risk_factor
        Steroid use, heavy drinking or neither, as the history records it.
    sport
        Index of the sport an active patient plays, or ``None``.
    """

    age_years: int
    sex: str
    hips: dict[Laterality, HipFacts]
    risk_factor: RiskFactor
    sport: int | None


def _pick(rng: np.random.Generator, options: list[str] | tuple[str, ...]) -> str:
    return options[int(rng.integers(len(options)))]


def sample_note_facts(
    rng: np.random.Generator, age_years: int, sex: str, classes: dict[Laterality, HipClass]
) -> NoteFacts:
    """Draw the history behind a note, given the true classes of both hips."""
    hips = {}
    for side, hip_class in classes.items():
        if hip_class is HipClass.NORMAL:
            # A normal hip occasionally hurts too (referred pain, trochanteric bursitis).
            painful = bool(rng.random() < 0.07)
            months = int(rng.integers(1, 12))
        else:
            painful = bool(rng.random() < 0.92)
            low, high = {
                HipClass.OSTEOARTHRITIS: (12, 120),
                HipClass.OSTEONECROSIS: (2, 18),
                HipClass.FAI: (6, 36),
            }[hip_class]
            months = int(rng.integers(low, high + 1))
        hips[side] = HipFacts(hip_class, painful, months)
    if not any(h.painful for h in hips.values()):
        # Patients come to clinic with a complaint: the worst hip hurts.
        side = max(hips, key=lambda s: hips[s].hip_class is not HipClass.NORMAL)
        hips[side] = HipFacts(hips[side].hip_class, True, hips[side].duration_months)
    onfh = any(h.hip_class is HipClass.OSTEONECROSIS for h in hips.values())
    draw = rng.random()
    if onfh:
        risk = (
            RiskFactor.STEROID
            if draw < 0.42
            else (RiskFactor.ALCOHOL if draw < 0.82 else RiskFactor.NONE)
        )
    elif age_years >= 25:
        # Confounders: the same history in adults whose hips are not necrotic.
        risk = (
            RiskFactor.STEROID
            if draw < 0.05
            else (RiskFactor.ALCOHOL if draw < 0.12 else RiskFactor.NONE)
        )
    else:
        risk = RiskFactor.NONE
    fai = any(h.hip_class is HipClass.FAI for h in hips.values())
    active = rng.random() < (0.8 if fai else 0.2)
    sport = int(rng.integers(len(SPORTS_EN))) if active else None
    return NoteFacts(age_years, sex, hips, risk, sport)


SPORTS_EN = (
    "football",
    "basketball",
    "martial arts",
    "ballet",
    "ice hockey",
    "yoga",
    "long-distance running",
)
SPORTS_ZH = ("足球", "篮球", "武术", "舞蹈", "冰球", "瑜伽", "长跑")

IRRELEVANT_EN = (
    "hypertension on amlodipine",
    "type 2 diabetes, diet controlled",
    "appendectomy in childhood",
    "hypothyroidism on levothyroxine",
    "gastro-oesophageal reflux",
    "hyperlipidaemia on a statin",
    "laparoscopic cholecystectomy",
    "mild intermittent asthma",
    "migraine",
)
IRRELEVANT_ZH = (
    "高血压病史5年，规律服用氨氯地平",
    "2型糖尿病病史，饮食控制",
    "幼年行阑尾切除术",
    "甲状腺功能减退，口服左甲状腺素",
    "胃食管反流病史",
    "高脂血症，服用他汀类药物",
    "腹腔镜胆囊切除术后",
    "偏头痛病史",
)
STEROID_REASON_EN = (
    "systemic lupus erythematosus",
    "nephrotic syndrome",
    "severe asthma",
    "a renal transplant",
    "rheumatoid arthritis",
)
STEROID_REASON_ZH = ("系统性红斑狼疮", "肾病综合征", "重症哮喘", "肾移植术后", "类风湿关节炎")

CLASS_NAME_EN = {
    HipClass.OSTEOARTHRITIS: "osteoarthritis",
    HipClass.OSTEONECROSIS: "avascular necrosis of the femoral head",
    HipClass.FAI: "femoroacetabular impingement",
    HipClass.NORMAL: "soft-tissue hip pain",
}
CLASS_NAME_ZH = {
    HipClass.OSTEOARTHRITIS: "髋关节骨关节炎",
    HipClass.OSTEONECROSIS: "股骨头坏死",
    HipClass.FAI: "髋关节撞击综合征",
    HipClass.NORMAL: "髋部软组织损伤",
}


def compose_note(rng: np.random.Generator, facts: NoteFacts, language: NoteLanguage) -> str:
    """Return the note text for ``facts`` in ``language``."""
    if language is NoteLanguage.CHINESE:
        return _compose_chinese(rng, facts)
    return _compose_english(rng, facts)


def _noisy_impression(
    rng: np.random.Generator, facts: NoteFacts
) -> tuple[Laterality, HipClass] | None:
    """Return the referral impression (side, class), sometimes wrong, or ``None`` when absent."""
    if rng.random() > 0.35:
        return None
    painful = [s for s, h in facts.hips.items() if h.painful] or list(facts.hips)
    side = painful[int(rng.integers(len(painful)))]
    true_class = facts.hips[side].hip_class
    if rng.random() < 0.7:
        return side, true_class
    others = [c for c in HipClass if c is not true_class]
    return side, others[int(rng.integers(len(others)))]


def _duration_en(months: int) -> str:
    if months < 24:
        return f"{months} month{'s' if months != 1 else ''}"
    return f"{months // 12} years"


def _duration_zh(months: int) -> str:
    return f"{months}个月" if months < 24 else f"{months // 12}年"


def _side_en(side: Laterality, short: bool) -> str:
    if short:
        return "R" if side is Laterality.RIGHT else "L"
    return "right" if side is Laterality.RIGHT else "left"


def _side_zh(side: Laterality) -> str:
    return "右" if side is Laterality.RIGHT else "左"


def _symptoms_en(rng: np.random.Generator, hip: HipFacts) -> str:
    options = {
        HipClass.OSTEOARTHRITIS: (
            "gradually worsening groin and buttock pain, worse after walking and relieved by rest",
            "activity-related pain with reduced walking distance and difficulty putting on socks",
            "progressive pain with morning stiffness lasting under 30 minutes",
        ),
        HipClass.OSTEONECROSIS: (
            "deep groin pain of insidious onset, worse on weight bearing, now limping",
            "groin pain radiating to the knee, worse with standing, occasionally at night",
            "increasing groin pain and a limp, with pain at rest in recent weeks",
        ),
        HipClass.FAI: (
            "anterior groin pain on deep flexion and prolonged sitting, with intermittent clicking",
            "sharp groin pain when pivoting and squatting, C-sign on describing the pain",
            "groin pain after sport and when getting out of a car",
        ),
        HipClass.NORMAL: (
            "lateral hip pain over the greater trochanter",
            "vague buttock discomfort after long walks",
            "occasional aching after exercise",
        ),
    }[hip.hip_class]
    return _pick(rng, options)


def _exam_en(rng: np.random.Generator, hip: HipFacts) -> str:
    if not hip.painful and hip.hip_class is HipClass.NORMAL:
        return _pick(
            rng,
            ("full painless range of motion", "unremarkable, FADIR and FABER negative", "normal"),
        )
    flexion = int(rng.integers(85, 120))
    internal = {
        HipClass.OSTEOARTHRITIS: int(rng.integers(0, 15)),
        HipClass.OSTEONECROSIS: int(rng.integers(5, 20)),
        HipClass.FAI: int(rng.integers(0, 15)),
        HipClass.NORMAL: int(rng.integers(25, 40)),
    }[hip.hip_class]
    findings = [
        f"flexion {flexion} degrees",
        f"internal rotation {internal} degrees at 90 degrees of flexion",
    ]
    if hip.hip_class is HipClass.FAI:
        findings.append(
            _pick(
                rng,
                (
                    "FADIR positive",
                    "anterior impingement test positive",
                    "positive FADIR reproducing the groin pain",
                ),
            )
        )
        if rng.random() < 0.5:
            findings.append("FABER positive")
    elif hip.hip_class is HipClass.OSTEOARTHRITIS:
        findings.append(
            _pick(
                rng,
                (
                    "pain at end range",
                    "crepitus on rotation",
                    "fixed flexion deformity of 10 degrees",
                ),
            )
        )
    elif hip.hip_class is HipClass.OSTEONECROSIS:
        findings.append(
            _pick(rng, ("painful internal rotation", "pain on log roll", "antalgic gait"))
        )
    else:
        findings.append("tender over the greater trochanter")
    return ", ".join(findings)


def _compose_english(rng: np.random.Generator, facts: NoteFacts) -> str:
    short = rng.random() < 0.3
    man = "man" if facts.sex == "M" else "woman"
    painful = [s for s, h in facts.hips.items() if h.painful]
    # Occasional contradiction: the complaint names the other side.
    complaint_sides = painful
    if rng.random() < 0.05 and len(painful) == 1:
        complaint_sides = [Laterality.LEFT if painful[0] is Laterality.RIGHT else Laterality.RIGHT]

    lines = []

    heading = _pick(rng, ("HISTORY OF PRESENT ILLNESS:", "HPI:", "History:"))
    opening = f"{facts.age_years}-year-old {man}"
    if facts.sport is not None:
        opening += f" who plays {SPORTS_EN[facts.sport]}"
    complaints = []
    for side in complaint_sides:
        hip = facts.hips[side]
        duration = _duration_en(hip.duration_months)
        complaints.append(f"{_side_en(side, short)} hip: {_symptoms_en(rng, hip)} for {duration}")
    lines.append(f"{heading} {opening}. " + "; ".join(complaints) + ".")
    if rng.random() < 0.4:
        lines.append(
            _pick(rng, ("No history of trauma.", "Denies injury.", "No previous hip surgery."))
        )

    history = [
        IRRELEVANT_EN[int(i)]
        for i in rng.choice(len(IRRELEVANT_EN), size=int(rng.integers(0, 3)), replace=False)
    ]
    if facts.risk_factor is RiskFactor.STEROID:
        reason = _pick(rng, STEROID_REASON_EN)
        history.append(f"{reason} on long-term oral prednisolone")
    lines.append(
        f"{_pick(rng, ('PAST MEDICAL HISTORY:', 'PMH:'))} "
        + ("; ".join(history) if history else "none")
        + "."
    )

    social = []
    if facts.risk_factor is RiskFactor.ALCOHOL:
        social.append(
            _pick(
                rng,
                (
                    "drinks about 6 units of spirits a day for 15 years",
                    "heavy alcohol use, over 400 ml of liquor daily",
                    "alcohol excess for many years",
                ),
            )
        )
    else:
        social.append(_pick(rng, ("occasional alcohol", "does not drink", "social drinker")))
    social.append(_pick(rng, ("non-smoker", "smokes 10 cigarettes a day", "ex-smoker")))
    lines.append(f"SOCIAL HISTORY: {', '.join(social)}.")
    if facts.risk_factor is not RiskFactor.STEROID and rng.random() < 0.3:
        lines.append("No corticosteroid use.")

    exam = []
    for side in (Laterality.RIGHT, Laterality.LEFT):
        exam.append(f"{_side_en(side, short).capitalize()} hip: {_exam_en(rng, facts.hips[side])}.")
    lines.append(f"{_pick(rng, ('EXAMINATION:', 'O/E:', 'PHYSICAL EXAM:'))} " + " ".join(exam))
    if (
        any(h.hip_class is HipClass.OSTEOARTHRITIS for h in facts.hips.values())
        and rng.random() < 0.6
    ):
        lines.append("Morning stiffness about 15-20 minutes.")

    impression = _noisy_impression(rng, facts)
    if impression is not None:
        side, hip_class = impression
        lines.append(f"Referred with suspected {_side_en(side, False)} {CLASS_NAME_EN[hip_class]}.")
    lines.append(
        _pick(
            rng,
            (
                "Plan: AP pelvis radiograph and CT of both hips.",
                "Imaging requested: radiograph and CT pelvis.",
                "For imaging and review.",
            ),
        )
    )
    return "\n".join(lines) + "\n"


def _symptoms_zh(rng: np.random.Generator, hip: HipFacts) -> str:
    options = {
        HipClass.OSTEOARTHRITIS: (
            "腹股沟区及臀部疼痛，逐渐加重，行走后明显，休息后缓解",
            "活动后疼痛，行走距离缩短，穿袜困难",
            "疼痛进行性加重，晨起关节僵硬，持续不超过30分钟",
        ),
        HipClass.OSTEONECROSIS: (
            "无明显诱因出现腹股沟区深部疼痛，负重时加重，伴跛行",
            "腹股沟区疼痛并向膝部放射，久站后加重，偶有夜间痛",
            "腹股沟区疼痛逐渐加重，伴跛行，近期出现静息痛",
        ),
        HipClass.FAI: (
            "深蹲及久坐后腹股沟前方疼痛，偶有弹响",
            "转身及下蹲时腹股沟区锐痛",
            "运动后及下车时腹股沟区疼痛",
        ),
        HipClass.NORMAL: (
            "大转子外侧疼痛",
            "长距离行走后臀部不适",
            "运动后偶有酸痛",
        ),
    }[hip.hip_class]
    return _pick(rng, options)


def _exam_zh(rng: np.random.Generator, hip: HipFacts) -> str:
    if not hip.painful and hip.hip_class is HipClass.NORMAL:
        return _pick(
            rng, ("活动自如，无压痛，“4”字试验（-）", "未见明显异常", "关节活动度正常，无压痛")
        )
    flexion = int(rng.integers(85, 120))
    internal = {
        HipClass.OSTEOARTHRITIS: int(rng.integers(0, 15)),
        HipClass.OSTEONECROSIS: int(rng.integers(5, 20)),
        HipClass.FAI: int(rng.integers(0, 15)),
        HipClass.NORMAL: int(rng.integers(25, 40)),
    }[hip.hip_class]
    findings = [
        "腹股沟区压痛（+）" if hip.hip_class is not HipClass.NORMAL else "大转子处压痛（+）"
    ]
    findings.append(f"屈曲{flexion}°，屈髋90°位内旋{internal}°")
    if hip.hip_class is HipClass.FAI:
        findings.append(
            _pick(rng, ("前撞击试验（FADIR）阳性", "屈曲内收内旋试验（+），诱发腹股沟区疼痛"))
        )
    elif hip.hip_class is HipClass.OSTEOARTHRITIS:
        findings.append(_pick(rng, ("“4”字试验（+）", "旋转时可及摩擦感", "屈曲挛缩约10°")))
    elif hip.hip_class is HipClass.OSTEONECROSIS:
        findings.append(
            _pick(rng, ("内旋时疼痛加重", "“4”字试验（+），跛行步态", "轴向叩击痛（+）"))
        )
    return "，".join(findings)


def _compose_chinese(rng: np.random.Generator, facts: NoteFacts) -> str:
    sex = "男" if facts.sex == "M" else "女"
    painful = [s for s, h in facts.hips.items() if h.painful]
    complaint_sides = painful
    if rng.random() < 0.05 and len(painful) == 1:
        complaint_sides = [Laterality.LEFT if painful[0] is Laterality.RIGHT else Laterality.RIGHT]
    longest = max(facts.hips[s].duration_months for s in complaint_sides)
    where = "双" if len(complaint_sides) == 2 else _side_zh(complaint_sides[0])

    lines = [f"患者{sex}性，{facts.age_years}岁。"]
    lines.append(
        f"主诉：{where}髋部疼痛{_duration_zh(longest)}"
        f"{_pick(rng, ('，加重1个月', '，加重伴活动受限2个月', ''))}。"
    )

    present = []
    for side in complaint_sides:
        hip = facts.hips[side]
        present.append(
            f"{_duration_zh(hip.duration_months)}前{_side_zh(side)}髋{_symptoms_zh(rng, hip)}"
        )
    history = "；".join(present)
    if rng.random() < 0.4:
        history += "。否认外伤史"
    lines.append(f"现病史：患者{history}。")

    past = [
        IRRELEVANT_ZH[int(i)]
        for i in rng.choice(len(IRRELEVANT_ZH), size=int(rng.integers(0, 3)), replace=False)
    ]
    if facts.risk_factor is RiskFactor.STEROID:
        past.append(f"因{_pick(rng, STEROID_REASON_ZH)}长期口服糖皮质激素（泼尼松）")
    elif rng.random() < 0.4:
        past.append("否认激素使用史")
    lines.append("既往史：" + ("；".join(past) if past else "体健") + "。")

    personal = []
    if facts.risk_factor is RiskFactor.ALCOHOL:
        personal.append(
            _pick(
                rng, ("饮酒史15年，每日白酒约250ml", "长期大量饮酒，每日白酒半斤以上", "嗜酒多年")
            )
        )
    else:
        personal.append(_pick(rng, ("偶有饮酒", "否认饮酒史", "少量饮酒")))
    personal.append(_pick(rng, ("否认吸烟史", "吸烟10年，每日10支", "已戒烟")))
    if facts.sport is not None:
        personal.append(f"平素喜爱{SPORTS_ZH[facts.sport]}运动")
    lines.append("个人史：" + "，".join(personal) + "。")

    exam = [
        f"{_side_zh(side)}髋：{_exam_zh(rng, facts.hips[side])}。"
        for side in (Laterality.RIGHT, Laterality.LEFT)
    ]
    lines.append("体格检查：" + "".join(exam))

    impression = _noisy_impression(rng, facts)
    if impression is not None:
        side, hip_class = impression
        lines.append(f"初步诊断：{_side_zh(side)}{CLASS_NAME_ZH[hip_class]}？")
    lines.append(
        _pick(
            rng,
            ("建议：行骨盆正位X线片及双髋CT检查。", "处理：完善影像学检查。", "拟行双髋CT评估。"),
        )
    )
    return "\n".join(lines) + "\n"
