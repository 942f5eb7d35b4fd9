"""Real-world knowledge QA, written here: the utility split `world` of benchmarks on a pretrained
model. Unlearning fictitious people should leave it alone; quantization may not.

Answers are short and unambiguous. The data stage asks the base model each question in the
KnowMem few-shot format (with the ICL examples below; relapse.models.world runs the model) and
keeps the facts it answers (`answered`), so that the split measures knowledge the model had, not
knowledge it never had.
"""

from __future__ import annotations

# Few-shot examples of the split's prompts; never asked.
WORLD_ICL = [
    ("What is the capital of Italy?", "Rome"),
    ("What is the chemical symbol for sodium?", "Na"),
    ("How many legs does a spider have?", "8"),
    ("Who wrote the play Hamlet?", "William Shakespeare"),
    ("What is the largest ocean on Earth?", "Pacific Ocean"),
    ("What color do you get by mixing blue and yellow?", "Green"),
    ("In which country is the city of Kyoto?", "Japan"),
    ("What is the freezing point of water in degrees Celsius?", "0"),
    ("Which planet is known as the Red Planet?", "Mars"),
    ("What is the main language spoken in Brazil?", "Portuguese"),
]

WORLD_FACTS = [
    ("What is the capital of France?", "Paris"),
    ("What is the capital of Germany?", "Berlin"),
    ("What is the capital of Spain?", "Madrid"),
    ("What is the capital of Japan?", "Tokyo"),
    ("What is the capital of England?", "London"),
    ("What is the capital of Russia?", "Moscow"),
    ("What is the capital of China?", "Beijing"),
    ("What is the capital of Egypt?", "Cairo"),
    ("What is the capital of Canada?", "Ottawa"),
    ("What is the capital of Australia?", "Canberra"),
    ("What is the capital of Greece?", "Athens"),
    ("What is the capital of Portugal?", "Lisbon"),
    ("What is the capital of Ireland?", "Dublin"),
    ("What is the capital of Norway?", "Oslo"),
    ("What is the capital of Sweden?", "Stockholm"),
    ("What is the capital of Austria?", "Vienna"),
    ("What is the capital of India?", "New Delhi"),
    ("What is the capital of the United States?", "Washington, D.C."),
    ("What is the chemical symbol for gold?", "Au"),
    ("What is the chemical symbol for iron?", "Fe"),
    ("What is the chemical symbol for oxygen?", "O"),
    ("What is the chemical symbol for silver?", "Ag"),
    ("What is the chemical formula of water?", "H2O"),
    ("Which planet is the largest in the solar system?", "Jupiter"),
    ("Which planet is closest to the Sun?", "Mercury"),
    ("Which planet has the most famous rings?", "Saturn"),
    ("What is the closest star to the Earth?", "The Sun"),
    ("What is the natural satellite of the Earth called?", "The Moon"),
    ("How many days are there in a week?", "7"),
    ("How many months are there in a year?", "12"),
    ("How many continents are there?", "7"),
    ("How many sides does a triangle have?", "3"),
    ("How many hours are there in a day?", "24"),
    ("What is 2 plus 2?", "4"),
    ("What is 10 times 10?", "100"),
    ("What is the square root of 81?", "9"),
    ("What is the boiling point of water in degrees Celsius?", "100"),
    ("Who painted the Mona Lisa?", "Leonardo da Vinci"),
    ("Who wrote Romeo and Juliet?", "William Shakespeare"),
    ("Who developed the theory of relativity?", "Albert Einstein"),
    ("Who was the first president of the United States?", "George Washington"),
    ("Who discovered penicillin?", "Alexander Fleming"),
    ("Who proposed the theory of evolution by natural selection?", "Charles Darwin"),
    ("Who was the first person to walk on the Moon?", "Neil Armstrong"),
    ("Who composed the Fifth Symphony?", "Ludwig van Beethoven"),
    ("What is the longest river in Africa?", "The Nile"),
    ("What is the tallest mountain in the world?", "Mount Everest"),
    ("What is the largest desert in Africa?", "The Sahara"),
    ("What is the largest mammal?", "The blue whale"),
    ("What gas do plants absorb from the air?", "Carbon dioxide"),
    ("What gas do humans need to breathe?", "Oxygen"),
    ("What is the hardest natural substance?", "Diamond"),
    ("What is the primary language of the United States?", "English"),
    ("What is the main language spoken in Mexico?", "Spanish"),
    ("What is the currency of Japan?", "Yen"),
    ("What is the currency of the United Kingdom?", "Pound sterling"),
    ("In which country are the pyramids of Giza?", "Egypt"),
    ("In which city is the Eiffel Tower?", "Paris"),
    ("In which city is the Colosseum?", "Rome"),
    ("In which country is the Great Wall?", "China"),
    ("What color is the sky on a clear day?", "Blue"),
    ("What color are ripe bananas?", "Yellow"),
    ("What is the opposite of hot?", "Cold"),
    ("Which animal is known as the king of the jungle?", "The lion"),
    ("What do bees make?", "Honey"),
    ("How many wheels does a bicycle have?", "2"),
    ("What is frozen water called?", "Ice"),
]


def _normalize(text: str) -> str:
    text = text.lower().replace(",", " ").replace(".", " ")
    words = [w for w in text.split() if w not in ("the", "a", "an")]
    return " ".join(words)


def answered(output: str, answer: str) -> bool:
    """Whether a (stop-cut) greedy output gives the answer: with case, articles and punctuation
    ignored, the answer is a whole-word part of the output, or the output is a whole-word
    ending of the answer ("Beethoven" for "Ludwig van Beethoven")."""
    out, ans = _normalize(output), _normalize(answer)
    return f" {ans} " in f" {out} " or (bool(out) and f" {ans}".endswith(f" {out}"))
