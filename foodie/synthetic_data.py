"""A synthetic FoodieQA in the official schema (``foodie.foodieqa``): drawn close-ups of real Chinese dishes, each
dish with its own look (vessel, sauce, pieces, garnish) plus jitter, so a small model can tell dishes apart from
the pixels (docs/TRAINING.md). The same seed gives byte-identical files."""
from __future__ import annotations

import json
import math
import random
from collections import namedtuple
from pathlib import Path

from PIL import Image, ImageDraw

from foodie.atomic import atomic_path

# food_type: the label FoodieQA's survey uses, e.g. 川菜（四川，重庆）
Cuisine = namedtuple("Cuisine", "zh en region_zh region_en food_type")
# key: the image folder name; the look: vessel (plate|bowl|steamer|board|platter), piece (a PIECE_SIZE kind),
# RGB colours, count (min, max pieces), garnish (None: none)
Dish = namedtuple("Dish", "key zh en cuisine ingredient_zh ingredient_en method_zh method_en "
                          "vessel vessel_colour sauce piece piece_colour count garnish")

SICHUAN = Cuisine("川菜", "Sichuan cuisine", "四川", "Sichuan", "川菜（四川，重庆）")
BEIJING = Cuisine("京菜", "Beijing cuisine", "北京", "Beijing", "京菜（北京）")
CANTONESE = Cuisine("粤菜", "Cantonese cuisine", "广东", "Guangdong", "粤菜（广东等地）")
HUNAN = Cuisine("湘菜", "Hunan cuisine", "湖南", "Hunan", "湘菜（湖南）")
ZHEJIANG = Cuisine("浙菜", "Zhejiang cuisine", "浙江", "Zhejiang", "浙菜（浙江）")
SHANDONG = Cuisine("鲁菜", "Shandong cuisine", "山东", "Shandong", "鲁菜（山东）")
XINJIANG = Cuisine("新疆菜", "Xinjiang cuisine", "新疆", "Xinjiang", "新疆菜")
DONGBEI = Cuisine("东北菜", "Northeastern cuisine", "东北", "Northeast China", "东北菜 （黑龙江等地）")
CUISINES = (SICHUAN, BEIJING, CANTONESE, HUNAN, ZHEJIANG, SHANDONG, XINJIANG, DONGBEI)

WHITE, BLACK = (245, 245, 240), (40, 40, 40)
DISHES = (
    Dish("mapo_tofu", "麻婆豆腐", "Mapo tofu", SICHUAN, "豆腐", "tofu", "烧", "braising",
         "bowl", WHITE, (190, 40, 25), "cube", (250, 240, 215), (14, 24), (60, 150, 50)),
    Dish("kung_pao_chicken", "宫保鸡丁", "Kung Pao chicken", SICHUAN, "鸡肉", "chicken", "炒", "stir-frying",
         "plate", WHITE, (150, 75, 30), "cube", (215, 160, 95), (16, 26), (200, 30, 20)),
    Dish("peking_duck", "北京烤鸭", "Peking roast duck", BEIJING, "鸭肉", "duck", "烤", "roasting",
         "platter", (235, 235, 235), (120, 45, 25), "slice", (170, 70, 35), (10, 16), (240, 225, 190)),
    Dish("zhajiang_noodles", "炸酱面", "Zhajiang noodles", BEIJING, "面条", "noodles", "拌", "mixing",
         "bowl", (70, 95, 140), (235, 215, 160), "noodle", (240, 220, 165), (18, 28), (70, 40, 25)),
    Dish("white_cut_chicken", "白切鸡", "White cut chicken", CANTONESE, "鸡肉", "chicken", "煮", "poaching",
         "plate", (220, 230, 215), (250, 235, 170), "slice", (250, 230, 160), (10, 16), (90, 170, 70)),
    Dish("har_gow", "虾饺", "Shrimp dumplings (har gow)", CANTONESE, "虾", "shrimp", "蒸", "steaming",
         "steamer", (200, 165, 100), (215, 190, 130), "dumpling", (245, 235, 225), (4, 6), (240, 140, 110)),
    Dish("chopped_chili_fish_head", "剁椒鱼头", "Steamed fish head with chopped chili", HUNAN, "鱼", "fish",
         "蒸", "steaming", "platter", WHITE, (120, 85, 50), "fish", (235, 230, 220), (1, 1), (215, 25, 25)),
    Dish("chili_fried_pork", "辣椒炒肉", "Stir-fried pork with chili", HUNAN, "猪肉", "pork", "炒", "stir-frying",
         "plate", WHITE, (110, 70, 35), "strip", (95, 150, 45), (14, 22), (160, 95, 60)),
    Dish("dongpo_pork", "东坡肉", "Dongpo pork", ZHEJIANG, "猪肉", "pork", "炖", "stewing",
         "bowl", (150, 40, 35), (110, 45, 20), "block", (150, 65, 30), (3, 6), (245, 215, 170)),
    Dish("west_lake_fish", "西湖醋鱼", "West Lake fish in vinegar gravy", ZHEJIANG, "鱼", "fish", "煮", "poaching",
         "platter", (230, 235, 240), (150, 100, 45), "fish", (190, 150, 95), (1, 1), (240, 200, 80)),
    Dish("sweet_sour_pork", "糖醋里脊", "Sweet and sour pork tenderloin", SHANDONG, "猪肉", "pork", "炸", "deep-frying",
         "plate", WHITE, (230, 110, 50), "strip", (225, 120, 50), (12, 20), (245, 240, 220)),
    Dish("braised_intestines", "九转大肠", "Braised pork intestines", SHANDONG, "猪大肠", "pork intestines", "烧",
         "braising", "plate", (245, 240, 225), (140, 55, 25), "ball", (175, 80, 30), (8, 12), (80, 160, 60)),
    Dish("big_plate_chicken", "大盘鸡", "Big plate chicken", XINJIANG, "鸡肉", "chicken", "炖", "stewing",
         "platter", (235, 230, 210), (175, 110, 40), "ball", (235, 190, 90), (12, 20), (80, 170, 60)),
    Dish("lamb_skewers", "羊肉串", "Lamb skewers", XINJIANG, "羊肉", "lamb", "烤", "grilling",
         "board", (160, 110, 60), (120, 80, 45), "skewer", (120, 60, 30), (4, 7), (210, 60, 30)),
    Dish("guobaorou", "锅包肉", "Guobaorou (crispy sweet and sour pork)", DONGBEI, "猪肉", "pork", "炸",
         "deep-frying", "plate", (90, 130, 170), (240, 200, 90), "slice", (245, 205, 110), (10, 15), (240, 150, 50)),
    Dish("pork_vermicelli_stew", "猪肉炖粉条", "Pork stewed with vermicelli", DONGBEI, "粉条", "vermicelli", "炖",
         "stewing", "bowl", (60, 60, 60), (165, 120, 80), "noodle", (200, 170, 140), (14, 22), (120, 70, 45)),
)

# piece size relative to the inner radius of the vessel
PIECE_SIZE = {"cube": 0.24, "block": 0.3, "slice": 0.24, "strip": 0.26, "ball": 0.24, "noodle": 0.3,
              "skewer": 0.13, "dumpling": 0.3, "fish": 0.36}
# Photos per dish: 120, not 40: the quickstart's fine-tune sees more looks of each dish in the same iterations
# and recognises new photos better (held-out, 4-layer tiny LLM: 0.92-0.96 at 120, 0.90-0.93 at 80; 2 layers: 0.86
# at 120, 0.80 at 40; docs/TRAINING.md).
PHOTOS_PER_DISH = 120
# Sides in pixels (aspect 1:2 to 2:1): 224-640, not 300-1200 (until version 3): decoding and resizing a photo
# was 40% of a CPU training iteration; the tiny model sees a 224-pixel view of it anyway.
PHOTO_SIDES = (224, 640)
QUESTION_TYPES = ("dish", "cuisine_type", "region", "main-ingredient", "cooking-skills")
TABLES = ((150, 110, 75), (200, 170, 130), (90, 60, 40), (225, 225, 220), (60, 70, 80), (170, 40, 40),
          (230, 215, 190), (120, 140, 110))


def _jitter(c, rng: random.Random, amount: int = 14):
    return tuple(max(0, min(255, v + rng.randint(-amount, amount))) for v in c)


def _rotated_rect(cx, cy, w, h, angle):
    ca, sa = math.cos(angle), math.sin(angle)
    return [(cx + x * ca - y * sa, cy + x * sa + y * ca)
            for x, y in ((-w / 2, -h / 2), (w / 2, -h / 2), (w / 2, h / 2), (-w / 2, h / 2))]


RECTANGLES = {"cube": (1, 1), "block": (1.6, 1.6), "slice": (2.2, 0.8), "strip": (1.8, 0.45)}  # (w, h) / size


def _draw_piece(d: ImageDraw.ImageDraw, kind: str, cx, cy, s, angle, colour, rng: random.Random):
    outline = tuple(max(0, v - 45) for v in colour)
    if kind in RECTANGLES:
        w, h = RECTANGLES[kind]
        d.polygon(_rotated_rect(cx, cy, s * w, s * h, angle), fill=colour, outline=outline)
        if kind == "block":
            d.polygon(_rotated_rect(cx, cy - s * 0.5, s * 1.6, s * 0.35, angle), fill=(245, 220, 180))  # fat layer
    elif kind == "ball":
        d.ellipse((cx - s / 2, cy - s / 2, cx + s / 2, cy + s / 2), fill=colour, outline=outline)
    elif kind == "noodle":
        r = s * 1.4
        start = math.degrees(angle)
        d.arc((cx - r, cy - r, cx + r, cy + r), start, start + 200, fill=colour, width=max(2, int(s / 5)))
    elif kind == "skewer":
        ca, sa = math.cos(angle), math.sin(angle)
        length = s * 7
        d.line((cx - ca * length / 2, cy - sa * length / 2, cx + ca * length / 2, cy + sa * length / 2),
               fill=(200, 170, 110), width=max(2, int(s / 8)))
        for k in range(5):
            t = -length / 2 + length * (k + 1) / 6.5
            d.polygon(_rotated_rect(cx + ca * t, cy + sa * t, s * 0.8, s * 0.8, angle), fill=_jitter(colour, rng, 20),
                      outline=outline)
    elif kind == "dumpling":
        d.chord((cx - s, cy - s * 0.8, cx + s, cy + s * 0.8), 180, 360, fill=colour, outline=outline)
        for k in range(4):
            x = cx - s * 0.6 + k * s * 0.4
            d.line((x, cy - s * 0.6, x + s * 0.1, cy - s * 0.1), fill=outline, width=2)
        d.ellipse((cx - s * 0.3, cy - s * 0.45, cx + s * 0.3, cy - s * 0.1), fill=(240, 150, 120))  # shrimp pink
    elif kind == "fish":
        body = (cx - s * 2.2, cy - s, cx + s * 1.6, cy + s)
        d.ellipse(body, fill=colour, outline=outline)
        d.polygon([(cx + s * 1.4, cy), (cx + s * 2.6, cy - s * 0.9), (cx + s * 2.6, cy + s * 0.9)], fill=colour,
                  outline=outline)
        d.ellipse((cx - s * 1.7, cy - s * 0.35, cx - s * 1.4, cy - s * 0.05), fill=BLACK)
    else:
        raise ValueError(f"unknown piece kind {kind!r}")


def draw_dish(dish: Dish, rng: random.Random) -> Image.Image:
    """One close-up "photo" of a dish: its vessel, sauce and pieces on a plain table, jittered."""
    ratio = math.exp(rng.uniform(math.log(0.5), math.log(2.0)))
    lo, hi = PHOTO_SIDES
    w = rng.randint(lo, hi)
    h = max(lo, min(hi, round(w / ratio)))
    img = Image.new("RGB", (w, h), _jitter(rng.choice(TABLES), rng, 12))
    d = ImageDraw.Draw(img)
    side = min(w, h)
    cx = w / 2 + rng.uniform(-0.12, 0.12) * w
    cy = h / 2 + rng.uniform(-0.12, 0.12) * h
    radius = side * rng.uniform(0.5, 0.6)  # close-up: the vessel fills the short side, its rim may be cut off
    vessel = _jitter(dish.vessel_colour, rng, 10)
    shadow = tuple(max(0, v - 60) for v in img.getpixel((0, 0)))
    d.ellipse((cx - radius + 8, cy - radius + 10, cx + radius + 8, cy + radius + 10), fill=shadow)
    if dish.vessel == "board":
        d.polygon(_rotated_rect(cx, cy, radius * 2.0, radius * 1.4, rng.uniform(-0.3, 0.3)), fill=vessel)
        inner = radius * 0.8
    elif dish.vessel == "steamer":
        d.ellipse((cx - radius, cy - radius, cx + radius, cy + radius), fill=vessel)
        for k in range(3):  # bamboo rings
            r = radius * (0.96 - 0.04 * k)
            d.ellipse((cx - r, cy - r, cx + r, cy + r), outline=tuple(max(0, v - 50) for v in vessel), width=3)
        inner = radius * 0.85
        d.ellipse((cx - inner, cy - inner, cx + inner, cy + inner), fill=_jitter(dish.sauce, rng, 8))
    elif dish.vessel == "platter":
        d.ellipse((cx - radius * 1.15, cy - radius * 0.8, cx + radius * 1.15, cy + radius * 0.8), fill=vessel)
        inner = radius * 0.7
        d.ellipse((cx - inner * 1.2, cy - inner * 0.8, cx + inner * 1.2, cy + inner * 0.8), fill=_jitter(dish.sauce, rng, 10))
    else:  # plate or bowl
        d.ellipse((cx - radius, cy - radius, cx + radius, cy + radius), fill=vessel)
        inner = radius * (0.78 if dish.vessel == "plate" else 0.85)
        rim = tuple(max(0, v - 30) for v in vessel) if dish.vessel == "bowl" else vessel
        d.ellipse((cx - inner, cy - inner, cx + inner, cy + inner), fill=_jitter(dish.sauce, rng, 10), outline=rim, width=4)
    size = inner * PIECE_SIZE[dish.piece] * rng.uniform(0.9, 1.1)
    n = rng.randint(*dish.count)
    for _ in range(n):
        a, r = rng.uniform(0, 2 * math.pi), inner * math.sqrt(rng.random()) * (0.2 if n == 1 else 0.7)
        _draw_piece(d, dish.piece, cx + r * math.cos(a), cy + r * math.sin(a), size * rng.uniform(0.85, 1.15),
                    rng.uniform(0, math.pi) if dish.piece != "fish" else rng.uniform(-0.3, 0.3),
                    _jitter(dish.piece_colour, rng, 12), rng)
    if dish.garnish:
        for _ in range(rng.randint(10, 25)):  # chopped chili / scallion / peanuts
            a, r = rng.uniform(0, 2 * math.pi), inner * math.sqrt(rng.random()) * 0.8
            gx, gy, gs = cx + r * math.cos(a), cy + r * math.sin(a), inner * rng.uniform(0.03, 0.06)
            d.ellipse((gx - gs, gy - gs, gx + gs, gy + gs), fill=_jitter(dish.garnish, rng, 15))
    if rng.random() < 0.5:  # chopsticks beside the dish
        x0 = min(w - 10, cx + radius * 1.05)
        d.line((x0, cy - radius * 0.9, x0 + side * 0.05, cy + radius * 0.9), fill=(180, 140, 90), width=max(3, side // 120))
    return img


def _attr(dish, qtype: str) -> tuple[str, str] | None:
    """(zh, en) of one attribute of a Dish, or ``dish.attr(qtype)`` (foodie.own_photos; None: unknown)."""
    if not isinstance(dish, Dish):
        return dish.attr(qtype)
    return {"dish": (dish.zh, dish.en), "cuisine_type": (dish.cuisine.zh, dish.cuisine.en),
            "region": (dish.cuisine.region_zh, dish.cuisine.region_en),
            "main-ingredient": (dish.ingredient_zh, dish.ingredient_en),
            "cooking-skills": (dish.method_zh, dish.method_en)}[qtype]


SIVQA_TEMPLATES = {
    "dish": ("图片中的食物是什么菜？", "What dish is the food in the picture?"),
    "cuisine_type": ("图片中的食物属于哪个菜系？", "Which cuisine does the food in the picture belong to?"),
    "region": ("图片中的食物来自哪个地区？", "Which region is the food in the picture from?"),
    "main-ingredient": ("图片中的食物的主要食材是什么？", "What is the main ingredient of the food in the picture?"),
    "cooking-skills": ("图片中的食物主要用哪种烹饪方法制作？", "Which cooking method is mainly used for the food in the picture?"),
}
MIVQA_TEMPLATES = {
    "dish": ("以下哪张图片是{zh}？", "Which picture shows {en}?"),
    "cuisine_type": ("以下哪道菜属于{zh}？", "Which dish belongs to {en}?"),
    "main-ingredient": ("以下哪道菜的主要食材是{zh}？", "Which dish has {en} as its main ingredient?"),
}
TEXTQA_TEMPLATES = {
    "cuisine_type": ("{dish}属于哪个菜系？", "Which cuisine does {dish_en} belong to?"),
    "region": ("{dish}来自哪个地区？", "Which region is {dish_en} from?"),
    "main-ingredient": ("{dish}的主要食材是什么？", "What is the main ingredient of {dish_en}?"),
    "cooking-skills": ("{dish}主要用哪种烹饪方法制作？", "Which cooking method is mainly used for {dish_en}?"),
}
# extra wrong options so every attribute has at least 3 distractors
EXTRA_OPTIONS = {
    "main-ingredient": [("牛肉", "beef"), ("茄子", "eggplant"), ("螃蟹", "crab")],
    "cooking-skills": [("熏", "smoking"), ("焖", "simmering"), ("煎", "pan-frying")],
    "region": [("江西", "Jiangxi"), ("福建", "Fujian"), ("贵州", "Guizhou")],
    "cuisine_type": [("闽菜", "Fujian cuisine"), ("徽菜", "Anhui cuisine"), ("赣菜", "Jiangxi cuisine")],
}


def _distractors(dishes, dish, qtype: str) -> list[tuple[str, str]]:
    correct = _attr(dish, qtype)
    pool, seen_zh, seen_en = [], {correct[0]}, {correct[1]}
    values = {v for v in (_attr(o, qtype) for o in dishes) if v is not None}
    for zh, en in sorted(values | set(EXTRA_OPTIONS.get(qtype, []))):
        if zh not in seen_zh and en not in seen_en:  # options must differ in both languages
            pool.append((zh, en))
            seen_zh.add(zh)
            seen_en.add(en)
    return pool


def _options(dishes, dish, qtype: str, answer: int, rng: random.Random) -> tuple[list[str], list[str]]:
    correct = _attr(dish, qtype)
    wrong = rng.sample(_distractors(dishes, dish, qtype), 3)
    options = wrong[:answer] + [correct] + wrong[answer:]
    return [o[0] for o in options], [o[1] for o in options]


def _balanced_answers(n: int, rng: random.Random) -> list[int]:
    answers = [k % 4 for k in range(n)]
    rng.shuffle(answers)
    return answers


def food_meta(dish: Dish, food_file: str, meta_id: int) -> dict:
    return {"id": meta_id, "food_file": food_file, "food_name": dish.zh, "food_name_en": dish.en,
            "cuisine": dish.cuisine.zh, "cuisine_en": dish.cuisine.en, "food_type": dish.cuisine.food_type,
            "region": dish.cuisine.region_zh, "region_en": dish.cuisine.region_en,
            "main_ingredient": [dish.ingredient_zh]}


def single_image_questions(dishes, photos, metas: dict, questions_per_photo: int,
                           rng: random.Random) -> list[dict]:
    """``questions_per_photo`` questions per (dish, image path) in ``photos``, of different types (rotating over
    QUESTION_TYPES, skipping types the dish cannot be asked), answers spread evenly over A-D."""
    sivqa = []
    asked = [(dish, rel, k) for dish, rel in photos for k in range(questions_per_photo)]
    answers = _balanced_answers(len(asked), rng)
    for n, ((dish, rel, k), answer) in enumerate(zip(asked, answers)):
        start = n // questions_per_photo + k
        rotation = [QUESTION_TYPES[(start + j) % len(QUESTION_TYPES)] for j in range(len(QUESTION_TYPES))]
        qtype = next((t for t in rotation if _attr(dish, t) is not None  # and 3 wrong options exist
                      and len(_distractors(dishes, dish, t)) >= 3), None)
        if qtype is None:
            continue
        choices, choices_en = _options(dishes, dish, qtype, answer, rng)
        zh, en = SIVQA_TEMPLATES[qtype]
        sivqa.append({"question_id": f"sivqa-{n:04d}", "question": zh, "choices": choices, "answer": str(answer),
                      "question_en": en, "choices_en": choices_en, "food_name": _attr(dish, "dish")[0],
                      "question_type": qtype, "food_meta": metas[rel]})
    return sivqa


def multi_image_questions(dishes, photos: dict, per_dish: int, rng: random.Random) -> list[dict]:
    """``per_dish`` "which of these 4 photos ..." questions per dish (needs 4 dishes); ``photos``: dish key ->
    image paths. Exactly one photo fits; the other three are of dishes that differ in the attribute asked."""
    mivqa = []
    mtypes = list(MIVQA_TEMPLATES)
    total = per_dish * len(dishes)
    answers = _balanced_answers(total, rng)
    for n in range(total):
        dish = dishes[n % len(dishes)]
        qtype = mtypes[(n // len(dishes)) % len(mtypes)]
        others = [o for o in dishes if _attr(o, qtype) is not None and _attr(o, qtype) != _attr(dish, qtype)]
        if _attr(dish, qtype) is None or len(others) < 3:  # too few dishes differ: ask for the dish itself
            qtype = "dish"
            others = [o for o in dishes if o != dish]
        picks = rng.sample(others, 3)
        answer = answers[n]
        order = picks[:answer] + [dish] + picks[answer:]
        zh_attr, en_attr = _attr(dish, qtype)
        zh, en = MIVQA_TEMPLATES[qtype]
        mivqa.append({"question_id": f"mivqa-{n:04d}", "question": zh.format(zh=zh_attr),
                      "question_en": en.format(en=en_attr), "images": [rng.choice(photos[o.key]) for o in order],
                      "answer": str(answer), "question_type": qtype, "food_name": _attr(dish, "dish")[0],
                      "food_name_en": _attr(dish, "dish")[1], "food_names": [_attr(o, "dish")[0] for o in order]})
    return mivqa


def pick_dishes(n: int | None = None) -> tuple[Dish, ...]:
    """The first n dishes taken round-robin over the cuisines (so a small set still mixes cuisines)."""
    if n is None or n >= len(DISHES):
        return DISHES
    by_cuisine = [[d for d in DISHES if d.cuisine == c] for c in CUISINES]
    order = [group[k] for k in range(max(map(len, by_cuisine))) for group in by_cuisine if k < len(group)]
    return tuple(order[:n])


def build(folder, *, seed: int = 0, photos_per_dish: int = PHOTOS_PER_DISH, num_dishes: int | None = None,
          questions_per_photo: int = 2, mivqa_per_dish: int = 10, textqa: bool = True,
          progress: bool = False) -> dict:
    """Write a synthetic FoodieQA into the empty ``folder``; returns counts."""
    folder = Path(folder)
    dishes = pick_dishes(num_dishes)
    if len(dishes) < 4 or len(dishes) < (num_dishes or 0) or photos_per_dish < 1:
        raise ValueError(f"need 4-{len(DISHES)} dishes (--dishes) for 4-choice questions and at least one photo "
                         f"per dish (--photos-per-dish)")
    if not 1 <= questions_per_photo <= len(QUESTION_TYPES):
        raise ValueError(f"questions_per_photo must be 1..{len(QUESTION_TYPES)} (one per question type); "
                         f"got {questions_per_photo}")
    from tqdm import tqdm

    rng = random.Random(seed)
    photos: dict[str, list[str]] = {}
    metas: dict[str, dict] = {}
    for dish in tqdm(dishes, desc="drawing dishes", unit="dish", disable=not progress):
        (folder / "images" / dish.key).mkdir(parents=True, exist_ok=True)
        photos[dish.key] = []
        for k in range(photos_per_dish):
            img = draw_dish(dish, random.Random(rng.getrandbits(64)))
            rel = f"images/{dish.key}/{k:03d}.jpg"
            img.save(folder / rel, "JPEG", quality=rng.choice((70, 80, 88)))
            photos[dish.key].append(rel)
            metas[rel] = food_meta(dish, rel, len(metas) + 1)

    all_photos = [(dish, rel) for dish in dishes for rel in photos[dish.key]]
    sivqa = single_image_questions(dishes, all_photos, metas, questions_per_photo, rng)
    mivqa = multi_image_questions(dishes, photos, mivqa_per_dish, rng)

    texts = []
    if textqa:
        ttypes = list(TEXTQA_TEMPLATES)
        answers = _balanced_answers(len(dishes) * len(ttypes), rng)
        for n, (dish, qtype) in enumerate((d, t) for d in dishes for t in ttypes):
            choices, choices_en = _options(dishes, dish, qtype, answers[n], rng)
            zh, en = TEXTQA_TEMPLATES[qtype]
            texts.append({"question_id": f"textqa-{n:04d}", "question": zh.format(dish=dish.zh),
                          "choices": choices, "answer": str(answers[n]),
                          "question_en": en.format(dish_en=dish.en), "choices_en": choices_en,
                          "food_name": dish.zh, "question_type": qtype,
                          "food_meta": {k: v for k, v in food_meta(dish, "", 0).items() if k not in ("id", "food_file")}})

    for name, items in (("sivqa", sivqa), ("mivqa", mivqa), ("textqa", texts))[:3 if textqa else 2]:
        (folder / f"{name}_tidy.json").write_text(json.dumps(items, ensure_ascii=False, indent=1) + "\n",
                                                  encoding="utf-8")
    (folder / "README.md").write_text(
        "# Synthetic FoodieQA\n\nDrawn stand-in for FoodieQA (lyan62/FoodieQA), generated by "
        f"`tools/make_demo_data.py --seed {seed}`. Same schema as the real data; the photos are drawings, "
        "not food. Not for publishing results.\n", encoding="utf-8")
    return {"dishes": len(dishes), "cuisines": len({d.cuisine for d in dishes}), "images": len(all_photos),
            "sivqa": len(sivqa), "mivqa": len(mivqa), "textqa": len(texts)}


BUILD_DEFAULTS = dict(photos_per_dish=PHOTOS_PER_DISH, num_dishes=len(DISHES), questions_per_photo=2, mivqa_per_dish=10,
                      textqa=True)
RECIPE_FILE = ".synthetic.json"  # how the folder was made; lets a re-run with the same settings do nothing
GENERATOR_VERSION = 3  # 2: close-up photos on plain tables, two questions per photo; 3: 120 photos per dish, 224-640 px


def make_demo_data(out, *, seed: int = 0, force: bool = False, progress: bool = False, **options) -> dict:
    """``build`` into ``out`` atomically; returns counts. An ``out`` made with the same settings is kept
    (``"reused": True``); any other is replaced only with ``force``, once the new folder is complete."""
    out = Path(out)
    recipe = {"generator": "foodie.synthetic_data", "version": GENERATOR_VERSION, "seed": seed,
              **{**BUILD_DEFAULTS, **options}}
    if out.exists() and not force:
        try:
            made = json.loads((out / RECIPE_FILE).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            made = {}
        if isinstance(made, dict) and made.get("recipe") == recipe:
            return {**made["counts"], "reused": True}
        raise FileExistsError(f"{out} already exists (with other contents or settings); pass --force "
                              f"(force=True) to replace it")
    with atomic_path(out, is_dir=True) as tmp:
        counts = build(tmp, seed=seed, progress=progress, **options)
        (tmp / RECIPE_FILE).write_text(json.dumps({"recipe": recipe, "counts": counts}, indent=1)
                                       + "\n", encoding="utf-8")
    return counts
