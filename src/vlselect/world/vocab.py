"""The world's vocabulary: attributes, prompt templates and the bitmap font.

Everything the world says comes from the constants here, so the corpus (:func:`vlselect.world.corpus`) and the
pool can never disagree about a word. Prompt templates follow DataOptim §4 and the LLaVA-1.5 mix (§11.3 of
``specs/dataoptim.md``): caption instructions, the short-answer suffix, the option-letter suffix and the region
prompts.
"""

from __future__ import annotations

SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "cross")
COLORS: dict[str, tuple[int, int, int]] = {
    "red": (225, 45, 45),
    "green": (40, 185, 70),
    "blue": (50, 95, 235),
    "yellow": (240, 215, 40),
    "purple": (165, 70, 210),
}
COLOR_NAMES: tuple[str, ...] = tuple(COLORS)
PLURALS: dict[str, str] = {"circle": "circles", "square": "squares", "triangle": "triangles", "cross": "crosses"}
SIZES: tuple[str, ...] = ("small", "large")
#: Position names on the 3x3 grid, row-major (row 0 = top, column 0 = left).
POSITIONS: tuple[str, ...] = (
    "top left", "top", "top right",
    "left", "center", "right",
    "bottom left", "bottom", "bottom right",
)
NUMBER_WORDS: tuple[str, ...] = ("zero", "one", "two", "three", "four")

#: OCR words: three letters each, so that each letter falls in one grid column (one 8 px patch at 24 px).
WORDS: tuple[str, ...] = (
    "cat", "dog", "sun", "box", "cup", "hat", "pen", "key", "bus", "car", "map", "jam",
    "fox", "owl", "bee", "egg", "ice", "zip", "web", "toy", "van", "gym", "sky",
)

# --- prompt templates -------------------------------------------------------------------------------------

#: Caption instructions: DataOptim's five (§4) and the LLaVA-1.5 TextCaps prompt (§11.3).
CAPTION_PROMPTS: tuple[str, ...] = (
    "Describe the image as simply as possible with a sentence or phrase.",
    "Give a brief summary of what you see.",
    "Provide a short description of the image.",
    "Write a short description for the image.",
    "Briefly describe the content of the image.",
    "Provide a one-sentence caption for the provided image.",
)
#: LLaVA-1.5 response-format prompts (§11.3).
SHORT_SUFFIX = "Answer the question using a single word or phrase."
OPTION_SUFFIX = "Answer with the option's letter from the given choices directly."
#: Region prompts as they appear in the LLaVA-1.5 mix (§11.3): REC (sentence → box), REG (box → sentence).
REC_PROMPT = "Please provide the bounding box coordinate of the region this sentence describes: {expr}."
REG_PROMPT = "Please provide a short description for this region: {box}."

#: Rephrasings per question kind; index 0 is canonical (used by the evaluation sets).
QUESTIONS: dict[str, tuple[str, ...]] = {
    "color_of_shape": (
        "What color is the {shape}?",
        "What is the color of the {shape}?",
        "Which color does the {shape} have?",
        "Tell me the color of the {shape}.",
    ),
    "color_at_pos": (
        "What color is the object at the {pos}?",
        "Which color is the object at the {pos}?",
    ),
    "count_all": (
        "How many objects are there?",
        "How many objects are in the image?",
        "Count the objects in the image.",
    ),
    "count_shape": (
        "How many {shapes} are there?",
        "How many {shapes} are in the image?",
    ),
    "count_color": (
        "How many {color} objects are there?",
        "How many {color} objects are in the image?",
    ),
    "shape_at_pos": (
        "What shape is at the {pos}?",
        "Which shape is at the {pos}?",
        "What is the shape of the object at the {pos}?",
    ),
    "pos_of": (
        "Where is the {color} {shape}?",
        "Where is the {color} {shape} located?",
        "In which part of the image is the {color} {shape}?",
    ),
    "exist": (
        "Is there a {color} {shape} in the image?",
        "Does the image contain a {color} {shape}?",
        "Can you see a {color} {shape}?",
    ),
    "ocr": (
        "What word is written in the image?",
        "What does the text in the image say?",
        "Read the word in the image.",
        "What is written on the sign?",
    ),
}

MC_PROMPT = "{question}\n{options}\n" + OPTION_SUFFIX

# --- text-only chat (off-target, like ShareGPT in the 665K mix) --------------------------------------------------
MIX: dict[tuple[str, str], str] = {
    ("blue", "yellow"): "green",
    ("red", "blue"): "purple",
    ("red", "yellow"): "orange",
    ("red", "green"): "brown",
    ("blue", "green"): "teal",
}
SIDES: dict[str, str] = {"triangle": "three", "square": "four", "circle": "none", "cross": "twelve"}
GREETINGS: tuple[tuple[str, str], ...] = (
    ("Hello!", "Hello! How can I help you today?"),
    ("Hi, who are you?", "I am a small assistant that answers questions about simple pictures."),
    ("Thank you.", "You are welcome."),
    ("Can you help me?", "Of course. What do you need?"),
    ("Good morning!", "Good morning! What would you like to know?"),
)

# --- a 5x7 bitmap font (uppercase), drawn by hand so that PNG bytes never depend on a font library -----------
FONT_5X7: dict[str, tuple[str, ...]] = {
    "A": (".###.", "#...#", "#...#", "#####", "#...#", "#...#", "#...#"),
    "B": ("####.", "#...#", "#...#", "####.", "#...#", "#...#", "####."),
    "C": (".###.", "#...#", "#....", "#....", "#....", "#...#", ".###."),
    "D": ("####.", "#...#", "#...#", "#...#", "#...#", "#...#", "####."),
    "E": ("#####", "#....", "#....", "####.", "#....", "#....", "#####"),
    "F": ("#####", "#....", "#....", "####.", "#....", "#....", "#...."),
    "G": (".###.", "#...#", "#....", "#.###", "#...#", "#...#", ".####"),
    "H": ("#...#", "#...#", "#...#", "#####", "#...#", "#...#", "#...#"),
    "I": (".###.", "..#..", "..#..", "..#..", "..#..", "..#..", ".###."),
    "J": ("..###", "...#.", "...#.", "...#.", "...#.", "#..#.", ".##.."),
    "K": ("#...#", "#..#.", "#.#..", "##...", "#.#..", "#..#.", "#...#"),
    "L": ("#....", "#....", "#....", "#....", "#....", "#....", "#####"),
    "M": ("#...#", "##.##", "#.#.#", "#.#.#", "#...#", "#...#", "#...#"),
    "N": ("#...#", "#...#", "##..#", "#.#.#", "#..##", "#...#", "#...#"),
    "O": (".###.", "#...#", "#...#", "#...#", "#...#", "#...#", ".###."),
    "P": ("####.", "#...#", "#...#", "####.", "#....", "#....", "#...."),
    "Q": (".###.", "#...#", "#...#", "#...#", "#.#.#", "#..#.", ".##.#"),
    "R": ("####.", "#...#", "#...#", "####.", "#.#..", "#..#.", "#...#"),
    "S": (".####", "#....", "#....", ".###.", "....#", "....#", "####."),
    "T": ("#####", "..#..", "..#..", "..#..", "..#..", "..#..", "..#.."),
    "U": ("#...#", "#...#", "#...#", "#...#", "#...#", "#...#", ".###."),
    "V": ("#...#", "#...#", "#...#", "#...#", "#...#", ".#.#.", "..#.."),
    "W": ("#...#", "#...#", "#...#", "#.#.#", "#.#.#", "#.#.#", ".#.#."),
    "X": ("#...#", "#...#", ".#.#.", "..#..", ".#.#.", "#...#", "#...#"),
    "Y": ("#...#", "#...#", ".#.#.", "..#..", "..#..", "..#..", "..#.."),
    "Z": ("#####", "....#", "...#.", "..#..", ".#...", "#....", "#####"),
}
