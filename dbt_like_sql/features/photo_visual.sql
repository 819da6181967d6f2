-- Photo visual content: the photo's position in the reduced visual space (its 16 leading
-- principal components, or fewer if the PCA keeps fewer). Unsupervised, so identical for train
-- and test photos; lets the model learn which kinds of cover get clicked at all.
--
-- grain: photo_id
-- continuous: pc_*
select photo_id, columns('^pc_(0[0-9]|1[0-5])$')
from pca_visual_features
