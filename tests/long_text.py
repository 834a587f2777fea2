"""A long sentence shared by the explain, terminal, figure and page tests (its own module, not conftest:
``from conftest import`` finds whichever conftest was imported first)."""

# 59 words, 65 tokens with MiniLM: longer than the terminal's 31 rows, and in layer 0, head 2
# puts all of bank's attention on "small", the word before it (a positional head).
LONG = ("In the late autumn of that strange year, when the river had risen twice above its banks and the old mill "
        "by the bridge had finally closed, my grandmother walked every morning to the small bank on the corner of "
        "the square to deposit the few coins she had saved, believing that money kept anywhere else would simply "
        "vanish.")

# 339 words, 376 tokens with MiniLM: past the 256 tokens MiniLM was trained on (its position table
# has 512), and past the 128 words up to which the report keeps every head's matrix.
PARAGRAPH = (
    "The village had grown up around a single bend in the river, where the water slowed and spread into a wide, "
    "shallow pool before it turned toward the sea. For as long as anyone could remember, the families who lived "
    "there had kept their savings in a small wooden chest under the floor of the chapel, and the priest kept the "
    "only key. When the railway finally reached the valley, a company from the city opened a bank in a narrow "
    "stone building beside the station, and a young clerk named Thomas arrived to run it. He wore a grey suit "
    "and explained again and again why money was safer behind his iron door than under the chapel floor. Most "
    "people listened and went home unconvinced. The old miller, who trusted no one, said that a river could "
    "flood a chapel but only a man could empty a bank. Then, in the spring of the third year, the rains came "
    "early and did not stop. The river "
    "rose over its banks, filled the meadows, and crept up the steps of the chapel until the floor was under a "
    "foot of brown water. When it drained away, the chest had split open and most of the paper notes inside were "
    "a grey pulp that fell apart in the hand. Thomas walked from house to house with his ledger and offered to "
    "exchange whatever could still be read for fresh notes, at no charge, if the families would open an account. "
    "By the end of the summer nearly every household in the valley had a small book with its name written on the "
    "cover in his careful hand. The miller held out the longest. He finally came in on a cold morning in "
    "November, put a purse on the counter and asked to see the iron door before he would sign anything. "
    "Thomas showed him the vault, and the old man counted his coins twice before he left them there, muttering "
    "that the river had won the argument for the bank."
)
