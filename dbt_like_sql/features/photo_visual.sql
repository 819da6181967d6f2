-- Photo visual content: the photo's position in the reduced visual space (its 16 leading
-- principal components; the PCA must keep at least 16, as it does by default). Unsupervised, so
-- identical for train and test photos; lets the model learn which kinds of cover get clicked at all.
--
-- grain: photo_id
-- continuous: pc_*
select photo_id,
       pc_00, pc_01, pc_02, pc_03, pc_04, pc_05, pc_06, pc_07,
       pc_08, pc_09, pc_10, pc_11, pc_12, pc_13, pc_14, pc_15
from pca_visual_features
