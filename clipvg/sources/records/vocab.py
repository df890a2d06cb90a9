"""Vocabularies of the real tools whose output ``clipvg records`` converts, and Pseudo-Q's
people / clothing class lists (used by :mod:`clipvg.pseudo.template`). Facts copied as data:

* :data:`BUA_ATTRIBUTES` - the 400 attribute names of the bottom-up-attention model whose
  per-box confidences Pseudo-Q's attribute detection files store (``LeapLabTHU/Pseudo-Q``
  ``data/statistic/attributes_vocab.txt``, first comma-separated alias of each line, lowercased,
  in file order: index ``i`` of a 400-vector is line ``i``; the same file as
  ``MILVLG/bottom-up-attention.pytorch`` ``evaluation/attributes_vocab.txt``).
* :data:`RELTR_CLASSES` / :data:`RELTR_PREDICATES` - RelTR's Visual Genome (VG150) entity and
  predicate names, index 0 = ``N/A`` / ``__background__`` (``CLASSES`` / ``REL_CLASSES`` of
  ``linhuixiao/CLIP-VG`` ``pseudo_label_generation_module/pseudo_relation_label_generation/
  RelTR/inference_gen_pseudo_relation_label.py``; RelTR's own ``inference.py`` has the same).
  RelTR's logits have one more column, the last: no-object / no-relation.
* :data:`PEOPLE_CLASSES`, :data:`HAT_CLASSES`, :data:`SHIRT_CLASSES`, :data:`PANTS_CLASSES`,
  :data:`SHOES_CLASSES` - Pseudo-Q's ``data/statistic/detect_{people,hat,shirt,pants,shoes}_
  classes.txt`` in file order (some names are in two clothing lists, e.g. "scarf" is a hat and
  a shirt; Pseudo-Q tests hat, shirt, pants, shoes in that order, see :func:`clothing_kind`).
"""

from __future__ import annotations


def _names(block: str) -> tuple[str, ...]:
    return tuple(n.strip() for n in " ".join(block.split("\n")).split("|"))


BUA_ATTRIBUTES = _names("""
gray | multi colored | double decker | unmade | red | camouflage | blue | white | green |
pink | yellow | black | ivory | throwing | orange | spiky | plaid | purple | soccer | brake
| blonde | american | flat screen | brown | wooden | performing | pulled back | windshield |
bald | chocolate | khaki | apple | blowing | parked | sticking out | fluorescent | glazed |
cooking | brick | home | palm | curly | cheese | crashing | calm | christmas | gravel |
chain link | clear | cloudy | curled | striped | flying | pine | arched | hardwood | silver
| framed | one way | tall | muscular | skiing | tiled | bare | surfing | stuffed | wii |
taking off | sleeping | jumping | metal | fire | neon green | soap | park | chalk | license
| powdered | up | woven | baby | polar | floppy | toasted | coffee | potted | wet | tennis |
dry | balding | carpeted | deep blue | cardboard | pointed | sandy | snow-covered | sheer |
wood | swimming | traffic | crouching | short | melted | marble | rock | open | paper |
stacked | stainless | cluttered | dirt | waving | ripe | salt | rolling | long | clock |
maroon | little | triangle | large | sand | fallen | foamy | stack | sliced | blond | plain
| straw | busy | checkered | extended | stainless steel | stone | rocky | laying down |
grazing | porcelain | snowboarding | stop | leather | gold | cargo | playing tennis | winter
| walking | roman | peeled | plastic | colorful | shining | burnt | messy | tile | cloudless
| glass | smiling | fruit | overcast | adult | water | round | birthday | dark | snowy |
leafless | young | wicker | skateboarding | cooked | huge | dress | wire | cracked |
concrete | laying | grassy | foggy | fried | slice | batting | mountain | halved | ski |
statue | still | octagonal | side view | sitting | wavy | floral | running | moving | small
| door | wine | closed | cement | splashing | empty | eating | skating | playing | old | tan
| leafy | down | electrical | manicured | standing | blurry | choppy | driving | watching |
parking | pointy | covering | for sale | reflecting | railroad | golden brown | steep |
granite | roll | train | spotted | fluffy | bending | tarmacked | furry | dirty | hanging |
above | half full | bright | chrome | toilet paper | squatting | chopped | flowing | neon |
skate | rusty | male | covered | outstretched | lit | riding | shirtless | reaching |
baseball | iron | night | speckled | bright blue | horizontal | denim | cake | hazy |
chipped | police | off | dead | nike | steamed | beige | brunette | short sleeved | laptop |
decorated | sharp | perched | clay | made | mesh | street | burgundy | bent | rusted | paved
| patterned | painted | flat | landing | light blue | puffy | shaggy | resting | overgrown |
bending over | circular | curved | cast | rainbow colored | lime green | ceramic | dried |
styrofoam | long sleeved | wispy | ocean | big | teal | oval | greenish | murky | tomato |
letter | bricked | in air | distant | full | opened | looking | power | holding | browned |
growing | backwards | clean | racing | grilled | seasoned | barefoot | kneeling | digital |
herd | sliding | recessed | lying | serving | polka dot | cut | ornate | piled | steel |
muddy | hilly | raised | hitting | evergreen | sunny | wrist | half | blank | numbered |
electric | computer | rolled | whole | lush | daytime | toilet | pointing | asphalt | public
| alone | posing | bunch | square | safety | wearing | stripes | bathroom | reflective |
assorted | swinging | airborne | dark blue | grass | burned | telephone | docked | pile |
laughing | brass | rubber | frosted | hairy | overhead | glowing | soda | number | talking |
barren | shaved | shiny | rough | written | older | thin | decorative | wrinkled | peeling |
golden | metallic | back | thick | black and white | leaning
""")

RELTR_CLASSES = _names("""
N/A | airplane | animal | arm | bag | banana | basket | beach | bear | bed | bench | bike |
bird | board | boat | book | boot | bottle | bowl | box | boy | branch | building | bus |
cabinet | cap | car | cat | chair | child | clock | coat | counter | cow | cup | curtain |
desk | dog | door | drawer | ear | elephant | engine | eye | face | fence | finger | flag |
flower | food | fork | fruit | giraffe | girl | glass | glove | guy | hair | hand | handle |
hat | head | helmet | hill | horse | house | jacket | jean | kid | kite | lady | lamp |
laptop | leaf | leg | letter | light | logo | man | men | motorcycle | mountain | mouth |
neck | nose | number | orange | pant | paper | paw | people | person | phone | pillow |
pizza | plane | plant | plate | player | pole | post | pot | racket | railing | rock | roof
| room | screen | seat | sheep | shelf | shirt | shoe | short | sidewalk | sign | sink |
skateboard | ski | skier | sneaker | snow | sock | stand | street | surfboard | table | tail
| tie | tile | tire | toilet | towel | tower | track | train | tree | truck | trunk |
umbrella | vase | vegetable | vehicle | wave | wheel | window | windshield | wing | wire |
woman | zebra
""")

RELTR_PREDICATES = _names("""
__background__ | above | across | against | along | and | at | attached to | behind |
belonging to | between | carrying | covered in | covering | eating | flying in | for | from
| growing on | hanging from | has | holding | in | in front of | laying on | looking at |
lying on | made of | mounted on | near | of | on | on back of | over | painted on | parked
on | part of | playing | riding | says | sitting on | standing on | to | under | using |
walking in | walking on | watching | wearing | wears | with
""")

PEOPLE_CLASSES = tuple(
    "bride ladies male mother children couple she lady players guy girls women toddler baby men "
    "kid adult kids people boys policeman child person boy girl player woman man".split())
HAT_CLASSES = tuple("beanie scarf cap headband visor hat goggles helmet sunglasses glasses".split())
SHIRT_CLASSES = tuple(
    "sleeve bandana tshirt waist blouse pocket apron sweatshirt sweatpants overalls fur jean "
    "scarf pajamas blazer outfit robe undershirt bib vest wool sweater blanket necktie costume "
    "uniforms dress bag hoodie coat suit tie backpack necklace jacket jersey skirt shirt jeans "
    "handbag bags".split())
PANTS_CLASSES = tuple(
    "pant short slacks sweatpants overalls jean shoes boots belt skirt pants tights jeans "
    "shorts".split())
SHOES_CLASSES = tuple(
    "cleats sandals socks sandal sneaker boot shoes sneakers boots shoe".split())
CLOTHING_KINDS = (("hat", HAT_CLASSES), ("shirt", SHIRT_CLASSES), ("pants", PANTS_CLASSES),
                  ("shoes", SHOES_CLASSES))
CLOTHING_CLASSES = frozenset(HAT_CLASSES + SHIRT_CLASSES + PANTS_CLASSES + SHOES_CLASSES)


def clothing_kind(label: str) -> str | None:
    """``hat`` / ``shirt`` / ``pants`` / ``shoes`` for a clothing class (the first list that
    holds it, in Pseudo-Q's test order), None for anything else."""
    for kind, names in CLOTHING_KINDS:
        if label in names:
            return kind
    return None


def pseudoq_group(label: str) -> str:
    """Pseudo-Q's grouping of a detection: ``people``, ``clothes`` or ``things``."""
    if label in PEOPLE_CLASSES:
        return "people"
    return "clothes" if label in CLOTHING_CLASSES else "things"
